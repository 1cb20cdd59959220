//! The producer in-process, over real gRPC: early refusals with the right status, OK only for a
//! job the broker holds, staging, `GetJob`, a missing broker, the bearer token.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{CommandFactory, FromArgMatches};
use cloudimg_engine::Limits;
use cloudimg_producer::Config;
use cloudimg_runtime::jobs::{FailureMarker, JobId};
use cloudimg_runtime::proto::image_service_client::ImageServiceClient;
use cloudimg_runtime::proto::{
    ConvertOptions, GetJobRequest, ImageJob, JobState, UploadMetadata, UploadRequest, image_job,
    upload_request,
};
use cloudimg_runtime::settings::{BrokerSettings, StoreSettings};
use cloudimg_test_support::producer::padded_jpeg;
use cloudimg_test_support::{amqp_url, broker, unique_queue};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Deletes `queue` and its dead-letter queue.
async fn delete_queues(channel: &lapin::Channel, queue: &str) {
    for q in [queue.to_owned(), format!("{queue}.dead")] {
        channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cloudimg-producer-{what}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A smooth gradient (compresses well).
fn jpeg(width: u16, height: u16) -> Vec<u8> {
    let w = width as usize;
    let rgb: Vec<u8> = (0..w * height as usize * 3)
        .map(|i| ((i / 3 % w + i / 3 / w + i % 3 * 40) % 256) as u8)
        .collect();
    encode(&rgb, width, height)
}

/// Noise (compresses badly).
fn noisy_jpeg(width: u16, height: u16) -> Vec<u8> {
    let rgb: Vec<u8> = (0..width as usize * height as usize * 3)
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    encode(&rgb, width, height)
}

fn encode(rgb: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 80)
        .encode(rgb, width, height, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

struct Producer {
    client: ImageServiceClient<Channel>,
    channel: Channel,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), cloudimg_producer::Error>>,
}

impl Producer {
    async fn start(config: Config) -> Producer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(cloudimg_producer::serve(config, listener, stop.clone()));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Producer {
            client: ImageServiceClient::new(channel.clone()),
            channel,
            stop,
            task,
        }
    }

    /// What the standard health service says about `cloudimg.v1.ImageService`.
    async fn health(&self) -> ServingStatus {
        let mut health = HealthClient::new(self.channel.clone());
        let reply = health
            .check(HealthCheckRequest {
                service: "cloudimg.v1.ImageService".into(),
            })
            .await
            .unwrap()
            .into_inner();
        reply.status()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn config(queue: &str, amqp: &str, store: StoreSettings) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        broker: BrokerSettings::new(amqp, queue),
        store,
        limits: Limits {
            max_input_bytes: 1 << 20,
            max_pixels: 1_000_000,
            ..Limits::default()
        },
        stage_over_bytes: 8 << 20,
        token: None,
        tls: None,
        service: Default::default(),
        upload_bounds: cloudimg_producer::UploadBounds {
            idle: Duration::from_secs(30),
            total: Duration::from_secs(600),
        },
        http2: cloudimg_producer::Http2Settings {
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_streams: 32,
        },
        memory_budget: 1 << 30,
        confirm_timeout: cloudimg_runtime::amqp::DEFAULT_CONFIRM_TIMEOUT,
    }
}

/// A producer configuration whose broker never answers (port 1): for refusals that must
/// happen before any publish.
fn config_without_broker(queue: &str) -> Config {
    config(queue, "amqp://127.0.0.1:1/%2f", StoreSettings::None)
}

fn metadata(size: u64) -> UploadRequest {
    UploadRequest {
        part: Some(upload_request::Part::Metadata(UploadMetadata {
            file_name: "photo.jpg".into(),
            content_type: "image/jpeg".into(),
            size,
            options: Some(ConvertOptions::default()),
        })),
    }
}

fn chunk(data: &[u8]) -> UploadRequest {
    UploadRequest {
        part: Some(upload_request::Part::Chunk(Bytes::copy_from_slice(data))),
    }
}

fn upload_of(data: &[u8]) -> Vec<UploadRequest> {
    let mut messages = vec![metadata(data.len() as u64)];
    messages.extend(data.chunks(64 << 10).map(chunk));
    messages
}

async fn upload(
    client: &mut ImageServiceClient<Channel>,
    messages: Vec<UploadRequest>,
) -> Result<cloudimg_runtime::proto::UploadReply, tonic::Status> {
    client
        .upload(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn bad_uploads_are_refused_early_with_the_right_status() {
    // No broker is needed: every refusal happens before a publish.
    let queue = unique_queue("refusals");
    let mut p = Producer::start(config_without_broker(&queue)).await;
    let pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n".to_vec();
    let big = jpeg(1200, 1000); // 1.2 MP: over the 1 MP pixel limit
    assert!(
        big.len() < 1 << 20,
        "the pixel-limit fixture must be under the size limit"
    );
    let cases: Vec<(&str, Vec<UploadRequest>, Code)> = vec![
        ("no messages", vec![], Code::InvalidArgument),
        ("metadata only", vec![metadata(0)], Code::InvalidArgument),
        (
            "chunk before metadata",
            vec![chunk(&jpeg(8, 8))],
            Code::InvalidArgument,
        ),
        ("not an image", upload_of(&pdf), Code::InvalidArgument),
        (
            "declared over the size limit",
            vec![metadata(2 << 20)],
            Code::ResourceExhausted,
        ),
        (
            "sent over the size limit without declaring it",
            {
                let mut m = vec![metadata(0), chunk(&jpeg(8, 8)[..16])];
                m.extend((0..20).map(|_| chunk(&[0u8; 64 << 10])));
                m
            },
            Code::ResourceExhausted,
        ),
        (
            "over the pixel limit",
            upload_of(&big),
            Code::ResourceExhausted,
        ),
        // Every format is recognised by content and its header checked by the engine's probe.
        (
            "a WebP over the pixel limit",
            upload_of(&cloudimg_hostile::webp_declaring(1200, 1000)),
            Code::ResourceExhausted,
        ),
        (
            "a GIF over the pixel limit",
            upload_of(&cloudimg_hostile::gif_declaring(1200, 1000)),
            Code::ResourceExhausted,
        ),
        (
            "a BMP over the pixel limit",
            upload_of(&cloudimg_hostile::bmp_declaring(1200, 1000)),
            Code::ResourceExhausted,
        ),
        (
            "an ICO over the pixel limit",
            upload_of(&cloudimg_hostile::ico_declaring(1200, 1000)),
            Code::ResourceExhausted,
        ),
        (
            "a TIFF over the pixel limit",
            upload_of(&cloudimg_hostile::tiff_declaring(1200, 1000)),
            Code::ResourceExhausted,
        ),
        (
            "a truncated GIF",
            upload_of(&cloudimg_hostile::gif_declaring(10, 10)[..20]),
            Code::InvalidArgument,
        ),
        (
            "declared size differs from what was sent",
            {
                let data = jpeg(8, 8);
                vec![metadata(data.len() as u64 + 1), chunk(&data)]
            },
            Code::InvalidArgument,
        ),
        (
            "truncated header",
            upload_of(&jpeg(64, 64)[..20]),
            Code::InvalidArgument,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, messages, code) in cases {
        match upload(&mut p.client, messages).await {
            Err(status) if status.code() == code => {}
            other => wrong.push(format!("{what}: expected {code:?}, got {other:?}")),
        }
    }
    let bad_quality = {
        let mut m = upload_of(&jpeg(8, 8));
        if let Some(upload_request::Part::Metadata(meta)) = &mut m[0].part {
            meta.options = Some(ConvertOptions {
                quality: 101,
                ..Default::default()
            });
        }
        m
    };
    match upload(&mut p.client, bad_quality).await {
        Err(s) if s.code() == Code::InvalidArgument => {}
        other => wrong.push(format!("quality 101: got {other:?}")),
    }
    p.stop().await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn without_a_broker_uploads_are_unavailable_never_ok() {
    let queue = unique_queue("nobroker");
    let mut p = Producer::start(config_without_broker(&queue)).await;
    let status = upload(&mut p.client, upload_of(&jpeg(16, 16)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(p.health().await, ServingStatus::NotServing);
    p.stop().await;
}

#[tokio::test]
async fn without_a_store_an_upload_over_the_staging_threshold_is_refused_naming_what_to_set() {
    let queue = unique_queue("nostore");
    let mut cfg = config_without_broker(&queue);
    cfg.stage_over_bytes = 1000;
    let mut p = Producer::start(cfg).await;
    let data = noisy_jpeg(300, 200);
    assert!(data.len() > 1000);
    let status = upload(&mut p.client, upload_of(&data)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("BUCKET_NAME") && status.message().contains("CLOUDIMG_OUT_DIR"),
        "{status:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn with_a_token_set_calls_without_it_are_unauthenticated() {
    let queue = unique_queue("token");
    let mut cfg = config_without_broker(&queue);
    cfg.token = cloudimg_runtime::settings::Secret::new(Some("s3cret"));
    let mut p = Producer::start(cfg).await;
    let status = upload(&mut p.client, upload_of(&jpeg(16, 16)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(GetJobRequest {
        job_id: JobId::random().to_string(),
        key: String::new(),
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    let status = p.client.get_job(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    p.stop().await;
}

#[tokio::test]
async fn ok_means_the_job_is_on_the_queue_inline_or_staged() {
    let Some(connection) = broker().await else {
        return;
    };
    let queue = unique_queue("accept");
    let dir = temp_dir("accept");
    let mut cfg = config(
        &queue,
        &amqp_url(),
        StoreSettings::Local { dir: dir.clone() },
    );
    cfg.stage_over_bytes = 20_000;
    let mut p = Producer::start(cfg).await;
    let small = jpeg(32, 32);
    let large = noisy_jpeg(300, 200);
    assert!(small.len() < 20_000 && large.len() > 20_000);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.health().await != ServingStatus::Serving && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.health().await, ServingStatus::Serving);
    let mut got = Vec::new();
    for data in [&small, &large] {
        let reply = upload(&mut p.client, upload_of(data)).await.unwrap();
        assert_eq!(reply.key, format!("gray/{}.jpg", reply.job_id));
        got.push((reply, data.clone()));
    }
    let channel = connection.create_channel().await.unwrap();
    for (reply, data) in &got {
        let message = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("an acknowledged upload is on the queue");
        let headers = message.delivery.properties.headers().clone();
        assert_eq!(
            cloudimg_runtime::amqp::header_str(headers.as_ref(), "x-cloudimg-job-id").as_deref(),
            Some(reply.job_id.as_str())
        );
        assert_eq!(message.delivery.properties.delivery_mode(), &Some(2));
        let job = ImageJob::decode(&message.delivery.data[..]).unwrap();
        assert_eq!(job.job_id, reply.job_id);
        assert_eq!(job.output_key, reply.key);
        assert_eq!(job.source_name, "photo.jpg");
        match job.payload.unwrap() {
            image_job::Payload::Inline(bytes) => {
                assert!(data.len() < 20_000);
                assert_eq!(&bytes[..], &data[..]);
            }
            image_job::Payload::Staged(staged) => {
                assert!(data.len() > 20_000);
                assert_eq!(staged.key, format!("staging/{}", reply.job_id));
                assert_eq!(std::fs::read(dir.join(&staged.key)).unwrap(), *data);
            }
        }
    }
    p.stop().await;
    delete_queues(&channel, &queue).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn get_job_answers_pending_done_and_failed_from_the_store() {
    let queue = unique_queue("getjob");
    let dir = temp_dir("getjob");
    let mut p = Producer::start(config(
        &queue,
        "amqp://127.0.0.1:1/%2f",
        StoreSettings::Local { dir: dir.clone() },
    ))
    .await;
    let ask = |id: &JobId| GetJobRequest {
        job_id: id.to_string(),
        key: String::new(),
    };
    let pending = JobId::random();
    let reply = p.client.get_job(ask(&pending)).await.unwrap().into_inner();
    assert_eq!(reply.state(), JobState::Pending);

    let done = JobId::random();
    let key = done.result_key(cloudimg_engine::OutputFormat::Png);
    std::fs::create_dir_all(dir.join("gray")).unwrap();
    std::fs::write(dir.join(&key), b"png").unwrap();
    let reply = p.client.get_job(ask(&done)).await.unwrap().into_inner();
    assert_eq!(
        (reply.state(), reply.key.as_str()),
        (JobState::Done, key.as_str())
    );

    let failed = JobId::random();
    let marker = FailureMarker {
        job_id: failed.to_string(),
        kind: "invalid".into(),
        error: "invalid JPEG: truncated".into(),
        source_name: "x.jpg".into(),
        failed_unix_ms: 0,
    };
    std::fs::create_dir_all(dir.join("failed")).unwrap();
    std::fs::write(
        dir.join(failed.failure_key()),
        serde_json::to_vec(&marker).unwrap(),
    )
    .unwrap();
    let reply = p.client.get_job(ask(&failed)).await.unwrap().into_inner();
    assert_eq!(reply.state(), JobState::Failed);
    assert_eq!(reply.error, "invalid JPEG: truncated");

    for bad in ["../../etc/passwd", "nope"] {
        let status = p
            .client
            .get_job(GetJobRequest {
                job_id: bad.into(),
                key: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    let status = p
        .client
        .get_job(GetJobRequest {
            job_id: done.to_string(),
            key: "gray/other.jpg".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    p.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_pixel_bomb_is_refused_from_its_first_chunk_before_the_rest_arrives() {
    let queue = unique_queue("bomb");
    let mut p = Producer::start(config_without_broker(&queue)).await;
    let big = jpeg(1200, 1000); // 1.2 MP: over the 1 MP pixel limit
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(4);
    tx.send(metadata(big.len() as u64)).await.unwrap();
    tx.send(chunk(&big[..4096])).await.unwrap();
    // The sender stays open: the rest of the file is never sent.
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let answer = tokio::time::timeout(Duration::from_secs(10), p.client.upload(stream))
        .await
        .expect("the producer answers before the upload ends");
    assert_eq!(answer.unwrap_err().code(), Code::ResourceExhausted);
    drop(tx);
    p.stop().await;
}

/// Sends `first` and then holds the upload open (the returned sender feeds it more).
fn open_upload(
    first: Vec<UploadRequest>,
) -> (
    tokio::sync::mpsc::Sender<UploadRequest>,
    impl futures_util::Stream<Item = UploadRequest>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(first.len().max(1) + 64);
    for m in first {
        tx.try_send(m).unwrap();
    }
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    (tx, stream)
}

#[tokio::test]
async fn an_upload_over_the_size_limit_is_refused_while_it_is_still_open() {
    let queue = unique_queue("oversize");
    let mut p = Producer::start(config_without_broker(&queue)).await;
    // Declared over the 1 MiB limit: refused on the metadata, before a single byte.
    let (tx, stream) = open_upload(vec![metadata(2 << 20)]);
    let answer = tokio::time::timeout(Duration::from_secs(10), p.client.upload(stream))
        .await
        .expect("refused before the upload ends");
    assert_eq!(answer.unwrap_err().code(), Code::ResourceExhausted);
    drop(tx);
    // Size not declared: refused on the chunk that crosses the limit, with the stream still open
    // (the producer never holds more than the limit).
    let mut first = vec![metadata(0), chunk(&jpeg(8, 8)[..16])];
    first.extend((0..17).map(|_| chunk(&[0u8; 64 << 10])));
    let (tx, stream) = open_upload(first);
    let answer = tokio::time::timeout(Duration::from_secs(10), p.client.upload(stream))
        .await
        .expect("refused before the upload ends");
    assert_eq!(answer.unwrap_err().code(), Code::ResourceExhausted);
    drop(tx);
    p.stop().await;
}

#[tokio::test]
async fn decompression_bombs_are_refused_from_the_header_of_either_format() {
    let queue = unique_queue("bombs");
    let mut p = Producer::start(config_without_broker(&queue)).await;
    // 60000 x 60000 PNG (3.6 gigapixels, 28.8 GB of 16-bit RGBA) declared in 65 bytes; a JPEG over the
    // 1 MP limit. Both refused while the upload is still open: no decoder ever sees them.
    let big_jpeg = jpeg(1200, 1000);
    for (what, head, size) in [
        (
            "png",
            cloudimg_hostile::png_declaring(60_000, 60_000),
            50 << 10,
        ),
        ("jpeg", big_jpeg[..4096].to_vec(), big_jpeg.len() as u64),
    ] {
        let (tx, stream) = open_upload(vec![metadata(size), chunk(&head)]);
        let answer = tokio::time::timeout(Duration::from_secs(10), p.client.upload(stream))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer while the upload is open"));
        let status = answer.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
        drop(tx);
    }
    p.stop().await;
}

/// The producer's command line parsed as the binary parses it, but with no environment
/// fallbacks: a limit or a token in the developer's shell must not change what the test measures.
fn parse_flags_only(flags: impl IntoIterator<Item = String>) -> cloudimg_producer::Args {
    let command = cloudimg_producer::Args::command().mut_args(|arg| arg.env(None));
    cloudimg_producer::Args::from_arg_matches(&command.try_get_matches_from(flags).unwrap())
        .unwrap()
}

#[tokio::test]
async fn every_queued_message_stays_under_16_mib_whatever_the_staging_setting() {
    let Some(connection) = broker().await else {
        return;
    };
    let queue = unique_queue("msgsize");
    let dir = temp_dir("msgsize");
    // Staging asked for only above 1 GB: the producer caps it at 15 MiB (RabbitMQ 4 and Amazon MQ
    // refuse messages over 16 MiB by default; the local 3.10 broker would take them silently).
    let args = parse_flags_only([
        "cloudimg-producer".into(),
        "--amqp-url".into(),
        amqp_url(),
        "--queue".into(),
        queue.clone(),
        "--out-dir".into(),
        dir.display().to_string(),
        "--stage-over-bytes".into(),
        "1000000000".into(),
    ]);
    let mut cfg = args.config().unwrap();
    cfg.store = StoreSettings::Local { dir: dir.clone() };
    assert_eq!(cfg.stage_over_bytes, 15 << 20);
    let mut p = Producer::start(cfg).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.health().await != ServingStatus::Serving && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = jpeg(64, 48);
    let sizes = [15 << 20, (15 << 20) + 1, 40 << 20];
    for size in sizes {
        let data = padded_jpeg(&base, size);
        let mut messages = vec![metadata(size as u64)];
        messages.extend(data.chunks(1 << 20).map(chunk));
        upload(&mut p.client, messages)
            .await
            .unwrap_or_else(|e| panic!("{size} bytes: {e:?}"));
    }
    let channel = connection.create_channel().await.unwrap();
    let mut seen = Vec::new();
    for _ in sizes {
        let message = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("an accepted upload is on the queue");
        let body = message.delivery.data.len();
        let job = ImageJob::decode(&message.delivery.data[..]).unwrap();
        let staged = matches!(job.payload, Some(image_job::Payload::Staged(_)));
        assert!(body < 16 << 20, "a message of {body} bytes");
        seen.push((body, staged));
    }
    seen.sort();
    // 15 MiB exactly travels inline (just under the cap); one byte more is staged.
    assert!(
        !seen[2].1 && seen[2].0 > 15 << 20 && seen[2].0 < (15 << 20) + 1024,
        "{seen:?}"
    );
    assert!(seen[0].1 && seen[1].1 && seen[1].0 < 1024, "{seen:?}");
    p.stop().await;
    delete_queues(&channel, &queue).await;
    std::fs::remove_dir_all(dir).unwrap();
}
