//! `cloudimg send` without a producer: every file is reported failed, in the contract's JSON
//! Lines, and the exit status says so. (The full round trip is the worker crate's e2e test.)

use std::process::Command;

#[test]
fn an_unreachable_producer_fails_every_file_with_a_json_line_each() {
    let dir = std::env::temp_dir().join(format!("cloudimg-send-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("folder")).unwrap();
    std::fs::write(dir.join("one.jpg"), b"\xff\xd8\xff").unwrap();
    std::fs::write(dir.join("folder/two.png"), b"\x89PNG").unwrap();
    std::fs::write(dir.join("folder/notes.txt"), b"not an image").unwrap();
    // A port nothing listens on, in the seed's `IMAGE... HOST:PORT` form.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_cloudimg"))
        .current_dir(&dir)
        .args(["send", "--json", "one.jpg", "folder", "nothere.jpg"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines.sort_by_key(|v| v["file"].as_str().unwrap().to_owned());
    let files: Vec<&str> = lines.iter().map(|v| v["file"].as_str().unwrap()).collect();
    assert_eq!(
        files,
        [
            "folder/notes.txt",
            "folder/two.png",
            "nothere.jpg",
            "one.jpg"
        ]
    );
    // A file found in a folder that is not an image by its extension is reported skipped.
    let (skipped, lines) = lines.split_first().unwrap();
    assert_eq!(skipped["status"], "skipped", "{skipped}");
    assert!(skipped["job_id"].is_null() && skipped["key"].is_null());
    for v in lines {
        assert_eq!(v["status"], "failed");
        assert!(v["job_id"].is_null() && v["key"].is_null());
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
}

#[test]
fn a_bad_producer_address_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudimg"))
        .args(["send", "--producer", "not an address", "x.jpg"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_token_is_never_sent_to_a_plain_http_producer_unless_tls_is_terminated_on_the_way() {
    let dir = std::env::temp_dir().join(format!("cloudimg-send-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("one.jpg"), b"\xff\xd8\xff").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let send = |producer: String, extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cloudimg"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CLOUDIMG_") {
                command.env_remove(name);
            }
        }
        command
            .current_dir(&dir)
            .args([
                "send",
                "--json",
                "--token",
                "s3cret",
                "one.jpg",
                "--producer",
            ])
            .arg(producer)
            .args(extra)
            .output()
            .unwrap()
    };
    let by_address = send(format!("127.0.0.1:{port}"), &[]);
    let by_url = send(format!("http://127.0.0.1:{port}"), &[]);
    // Told that TLS is added on the way, it sends (and fails only because nothing listens).
    let terminated = send(format!("127.0.0.1:{port}"), &["--tls-terminated"]);
    std::fs::remove_dir_all(&dir).unwrap();
    for (what, out) in [("HOST:PORT", &by_address), ("http:// URL", &by_url)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(out.stdout.is_empty(), "{what}: nothing was attempted");
        assert!(
            stderr.contains("CLOUDIMG_TLS_TERMINATED"),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("s3cret"), "{what}: the token was printed");
    }
    assert_eq!(terminated.status.code(), Some(1));
    let line: serde_json::Value =
        serde_json::from_slice(terminated.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["status"], "failed");
}

#[test]
fn a_run_that_sends_nothing_it_was_given_exits_1() {
    let dir = std::env::temp_dir().join(format!("cloudimg-send-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("readme.txt"), b"not an image").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cloudimg"))
        .args(["send", "--json"])
        .arg(&dir)
        .arg("127.0.0.1:9")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["status"], "skipped");
}
