//! HDFS through hdfs-native: create, write, close, rename, list and read back a file
//! of a few MiB, the way the archive writes its Parquet files.

use bytes::Bytes;
use hdfs_native::{ClientBuilder, WriteOptions};
use weir_integration::{Service, unique};

#[tokio::test]
async fn a_file_written_under_a_temporary_name_reads_back_after_rename() {
    let url = Service::Hdfs.addr();
    let client = ClientBuilder::new()
        .with_url(&url)
        .build()
        .expect("HDFS client");
    let dir = format!("/weir-smoke/{}", unique("hdfs"));
    let temporary = format!("{dir}/_tmp.part-0.parquet");
    let final_name = format!("{dir}/part-0.parquet");

    // 5 MiB of a pattern that would show a shifted or dropped block.
    let content: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut writer = client
        .create(&temporary, WriteOptions::default().create_parent(true))
        .await
        .expect("create the temporary file");
    for chunk in content.chunks(700 * 1024) {
        writer
            .write_bytes(Bytes::copy_from_slice(chunk))
            .await
            .expect("write");
    }
    writer.close().await.expect("close");

    client
        .rename(&temporary, &final_name, false)
        .await
        .expect("rename");
    let listing = client.list_status(&dir, false).await.expect("list");
    let names: Vec<&str> = listing.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        names,
        vec![final_name.as_str()],
        "only the final name is visible"
    );
    assert_eq!(listing[0].length, content.len());

    let mut reader = client.read(&final_name).await.expect("open for read");
    let read = reader.read_bytes(reader.file_length()).await.expect("read");
    assert!(
        read.as_ref() == content.as_slice(),
        "read back the same bytes"
    );

    assert!(
        client.delete(&dir, true).await.expect("delete"),
        "cleaned up"
    );
}
