//! Redis through the redis crate: INCRBY and an atomic Lua script with a fence, the
//! shape the exactly-once counters use.

use redis::AsyncCommands;
use weir_integration::{Service, unique};

/// Adds `ARGV[2]` to `KEYS[1]` only when offset `ARGV[1]` is beyond the fence in
/// `KEYS[2]`; returns 1 when applied, 0 when skipped as a replay.
const FENCED_ADD: &str = r#"
local fence = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) <= fence then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"#;

#[tokio::test]
async fn incrby_and_a_fenced_lua_script_apply_once() {
    let url = Service::Redis.addr();
    let client = redis::Client::open(url).expect("redis client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let tag = unique("smoke");
    let counter = format!("{{{tag}}}:count");
    let fence = format!("{{{tag}}}:fence");

    let after: i64 = conn.incr(&counter, 5).await.expect("INCRBY");
    assert_eq!(after, 5);

    let script = redis::Script::new(FENCED_ADD);
    let applied: i64 = script
        .key(&counter)
        .key(&fence)
        .arg(10)
        .arg(7)
        .invoke_async(&mut conn)
        .await
        .expect("script");
    assert_eq!(applied, 1, "a batch beyond the fence is applied");
    let replayed: i64 = script
        .key(&counter)
        .key(&fence)
        .arg(10)
        .arg(7)
        .invoke_async(&mut conn)
        .await
        .expect("script");
    assert_eq!(replayed, 0, "the same batch again is skipped");
    let total: i64 = conn.get(&counter).await.expect("GET");
    assert_eq!(total, 12);

    let _: () = conn.del(&[&counter, &fence]).await.expect("DEL");
}
