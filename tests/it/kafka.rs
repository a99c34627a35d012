//! Kafka through rdkafka: a consumer group with manual offset commits, and a second
//! member of the group resuming exactly after what the first one committed.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use weir_integration::{Service, unique};

const MESSAGES: usize = 10_000;
const PARTITIONS: i32 = 3;
const FIRST_MEMBER_TAKES: usize = 6_000;

fn consumer(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()
        .expect("create consumer")
}

/// Polls until `want` messages were handled or the deadline passes; returns the
/// (partition, offset, value) of each, in the order handled.
fn take(consumer: &BaseConsumer, want: usize, deadline: Duration) -> Vec<(i32, i64, String)> {
    let start = Instant::now();
    let mut got = Vec::with_capacity(want);
    while got.len() < want {
        assert!(
            start.elapsed() < deadline,
            "Kafka delivered {} of {want} messages in {deadline:?}: is the broker still up? \
             (`tests/stack status`)",
            got.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("consume from Kafka");
            let value =
                String::from_utf8(message.payload().expect("payload").to_vec()).expect("utf-8");
            got.push((message.partition(), message.offset(), value));
        }
    }
    got
}

/// The offsets to commit after handling `handled`: one past the last handled offset per partition.
fn positions(topic: &str, handled: &[(i32, i64, String)]) -> TopicPartitionList {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset, _) in handled {
        let slot = next.entry(*partition).or_default();
        *slot = (*slot).max(offset + 1);
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in next {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))
            .expect("add offset");
    }
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_group_member_resumes_after_the_committed_offsets() {
    let brokers = Service::Kafka.addr();
    let topic = unique("smoke");
    let group = unique("smoke-group");

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("create admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topic");
    for result in created {
        result.expect("topic created");
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5")
        .create()
        .expect("create producer");
    let sends = (0..MESSAGES).map(|i| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            let key = format!("member-{}", i % 97);
            let value = format!("event-{i}");
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(err, _)| err)
        }
    });
    let delivered = futures::future::join_all(sends).await;
    let failures: Vec<_> = delivered.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} sends failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let partitions_used: HashSet<i32> = delivered
        .iter()
        .map(|r| r.as_ref().expect("delivered").partition)
        .collect();
    assert_eq!(
        partitions_used.len(),
        PARTITIONS as usize,
        "keys spread over every partition"
    );

    let (first, second) = tokio::task::spawn_blocking(move || {
        let first_member = consumer(&brokers, &group);
        first_member.subscribe(&[&topic]).expect("subscribe");
        let first = take(&first_member, FIRST_MEMBER_TAKES, Duration::from_secs(90));
        first_member
            .commit(&positions(&topic, &first), CommitMode::Sync)
            .expect("commit the handled offsets");
        drop(first_member);

        let second_member = consumer(&brokers, &group);
        second_member.subscribe(&[&topic]).expect("subscribe");
        let second = take(
            &second_member,
            MESSAGES - FIRST_MEMBER_TAKES,
            Duration::from_secs(90),
        );
        // Nothing beyond the remainder may arrive: that would be a replay of committed work.
        let extra = second_member.poll(Duration::from_secs(3));
        assert!(
            extra.is_none(),
            "the second member got more than the uncommitted remainder"
        );
        (first, second)
    })
    .await
    .expect("consumer thread");

    let first_seen: HashSet<(i32, i64)> = first.iter().map(|(p, o, _)| (*p, *o)).collect();
    let second_seen: HashSet<(i32, i64)> = second.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(
        first_seen.len(),
        FIRST_MEMBER_TAKES,
        "no duplicates within the first member"
    );
    assert_eq!(
        second_seen.len(),
        MESSAGES - FIRST_MEMBER_TAKES,
        "no duplicates within the second"
    );
    assert!(
        first_seen.is_disjoint(&second_seen),
        "the second member re-read committed messages"
    );

    let values: HashSet<String> = first.into_iter().chain(second).map(|(_, _, v)| v).collect();
    let expected: HashSet<String> = (0..MESSAGES).map(|i| format!("event-{i}")).collect();
    assert_eq!(
        values, expected,
        "every produced message consumed exactly once"
    );
}
