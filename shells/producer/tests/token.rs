//! The real `cloudimg-producer` binary refuses to start with a bearer token it would receive in
//! clear: a token, no TLS certificate, and no `CLOUDIMG_TLS_TERMINATED=true`.

use std::time::{Duration, Instant};

use cloudimg_test_support::producer::*;

#[test]
fn a_token_over_plain_grpc_is_refused_at_startup_unless_tls_ends_in_front() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let base = [
        // No broker is needed: the refusal comes before any connection.
        ("AMQP_URL", "amqp://127.0.0.1:1/%2f"),
        ("CLOUDIMG_LISTEN", listen.as_str()),
        ("CLOUDIMG_TOKEN", "s3cret-token"),
    ];
    let refused = producer_command(&base).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CLOUDIMG_TLS_TERMINATED") && stderr.contains("CLOUDIMG_TLS_CERT"),
        "the error says what to set: {stderr}"
    );
    assert!(
        !stderr.contains("s3cret-token"),
        "the token was printed: {stderr}"
    );

    // With TLS terminated in front it starts and listens.
    let mut env = base.to_vec();
    env.push(("CLOUDIMG_TLS_TERMINATED", "true"));
    let mut started = producer_command(&env)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let listening = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break true;
        }
        if Instant::now() > deadline || started.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = started.kill();
    let _ = started.wait();
    assert!(
        listening,
        "with CLOUDIMG_TLS_TERMINATED=true the producer serves"
    );
}
