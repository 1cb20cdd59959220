//! Security on the real binaries:
//!
//! * gRPC over TLS (`CLOUDIMG_TLS_CERT`/`CLOUDIMG_TLS_KEY`) with a bearer token
//!   (`CLOUDIMG_TOKEN`): the client trusts a test CA with `--ca-cert` and reaches `https://`;
//!   without the CA, over plain HTTP, or without the token it fails and exits non-zero.
//! * No credential (the token, the broker password, the S3 secret key) appears in any log line,
//!   even at `RUST_LOG=debug`, and JSON logs are one JSON object per line; `--help` of every
//!   binary lists the settings' environment variables without the secrets they hold.
//! * `amqps://` end to end through a TLS-terminating stunnel in front of RabbitMQ, with the test CA
//!   given as `CLOUDIMG_AMQP_CA`; a plain AMQP client cannot talk to that port, and a client that
//!   does not trust the CA is refused.

use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::time::Duration;

use cloudimg_runtime::settings::BrokerSettings;
use cloudimg_test_support::binary as binary_path;
use cloudimg_test_support::*;

#[test]
fn help_never_prints_a_secret_set_in_the_environment() {
    let secrets = [
        (
            "AMQP_URL",
            "amqp://user:amqp-secret-4f1e@127.0.0.1:5672/%2f",
            "amqp-secret-4f1e",
        ),
        ("CLOUDIMG_TOKEN", "token-secret-9c2b", "token-secret-9c2b"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "aws-secret-7d3a",
            "aws-secret-7d3a",
        ),
    ];
    let helps: [(&str, &[&str], &[&str]); 4] = [
        (
            "cloudimg-producer",
            &["--help"],
            &["AMQP_URL", "CLOUDIMG_TOKEN"],
        ),
        ("cloudimg-worker", &["--help"], &["AMQP_URL"]),
        ("cloudimg", &["send", "--help"], &["CLOUDIMG_TOKEN"]),
        ("cloudimg", &["--help"], &[]),
    ];
    let mut problems = Vec::new();
    for (binary, args, names) in helps {
        let mut command = Command::new(binary_path(binary));
        without_inherited_settings(&mut command).args(args);
        for (name, value, _) in secrets {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            problems.push(format!("{binary} {args:?}: exit {:?}", out.status));
        }
        // The help is there and names the variables (so the check below looked at the right
        // text), but not what they hold.
        for name in names {
            if !text.contains(&format!("env: {name}")) {
                problems.push(format!("{binary} {args:?} does not name {name}: {text}"));
            }
        }
        for (name, _, secret) in secrets {
            if text.contains(secret) {
                problems.push(format!(
                    "{binary} {args:?} prints the {name} secret: {text}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A broker user of its own with a password no other test uses, so the logs can be searched for
/// it; `None` (guest instead) where rabbitmqctl is missing.
struct BrokerUser {
    name: String,
    password: String,
}

impl BrokerUser {
    fn create() -> Option<BrokerUser> {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let user = BrokerUser {
            name: format!("cloudimg-test-{tag}"),
            password: format!("pw-{tag}-secret"),
        };
        (rabbitmqctl(&["add_user", &user.name, &user.password])
            && rabbitmqctl(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]))
        .then_some(user)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_user", &self.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_a_token_and_no_credential_in_any_log() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(connection) = broker().await else {
        return;
    };
    if !openssl_available() {
        skip::<()>("the openssl command is missing (it makes the test CA)");
        return;
    }
    let pki_dir = TempDir::new("pki");
    let pki = make_pki(&pki_dir.0);
    let user = BrokerUser::create();
    let amqp = match (&user, amqp_url() == DEFAULT_AMQP) {
        (Some(u), true) => format!("amqp://{}:{}@127.0.0.1:5672/%2f", u.name, u.password),
        _ => {
            // The rest of the check still runs; only the password search is skipped.
            skip::<()>(
                "no broker user of its own (rabbitmqctl missing or AMQP_URL set): the broker password is not searched for",
            );
            amqp_url()
        }
    };
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let s3_secret = format!("s3-{}", uuid::Uuid::new_v4().simple());
    let bucket = Bucket::create(&endpoint).await;
    let queue = unique_queue("tls");
    let shells = Shells::new(
        amqp,
        &queue,
        StoreEnv::S3 {
            bucket: bucket.name.clone(),
            endpoint,
        },
    );
    let cert = pki.server_cert.display().to_string();
    let key = pki.server_key.display().to_string();
    let (mut producer, address) = shells.producer(&[
        ("CLOUDIMG_TLS_CERT", &cert),
        ("CLOUDIMG_TLS_KEY", &key),
        ("CLOUDIMG_TOKEN", &token),
        ("AWS_SECRET_ACCESS_KEY", &s3_secret),
        ("RUST_LOG", "debug"),
        ("CLOUDIMG_LOG_FORMAT", "json"),
    ]);
    let mut worker = shells.worker(&[("AWS_SECRET_ACCESS_KEY", &s3_secret), ("RUST_LOG", "debug")]);
    let port = address.rsplit_once(':').unwrap().1;
    let images = TempDir::new("tls-images");
    let image = images.0.join("photo.jpg");
    std::fs::write(&image, fixture_jpeg(120, 90, 1, 30, 90)).unwrap();
    let ca = pki.ca_cert.display().to_string();

    let run = |url: String, extra: Vec<&str>| {
        let mut args: Vec<OsString> = ["--wait", "--timeout", "60"]
            .iter()
            .chain(extra.iter())
            .map(OsString::from)
            .collect();
        args.push(image.clone().into_os_string());
        let url = url.clone();
        async move { send_async(&url, args).await }
    };
    let mut problems = Vec::new();
    // (what, producer, flags, exit code, status or error prefix)
    type Case<'a> = (&'a str, String, Vec<&'a str>, Option<i32>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "https by name, CA, token",
            format!("https://localhost:{port}"),
            vec!["--ca-cert", &ca, "--token", &token],
            Some(0),
            "done",
        ),
        (
            "https by address, CA, token",
            format!("https://127.0.0.1:{port}"),
            vec!["--ca-cert", &ca, "--token", &token],
            Some(0),
            "done",
        ),
        (
            "https without the CA",
            format!("https://localhost:{port}"),
            vec!["--token", &token],
            Some(1),
            "failed",
        ),
        (
            "plain http to the TLS port",
            address.clone(),
            vec!["--token", &token, "--tls-terminated"],
            Some(1),
            "failed",
        ),
        (
            "https without the token",
            format!("https://localhost:{port}"),
            vec!["--ca-cert", &ca],
            Some(1),
            "Unauthenticated",
        ),
        (
            "https with a wrong token",
            format!("https://localhost:{port}"),
            vec!["--ca-cert", &ca, "--token", "wrong"],
            Some(1),
            "Unauthenticated",
        ),
        (
            "a CA for a plain-http producer",
            address.clone(),
            vec!["--ca-cert", &ca],
            Some(2),
            "",
        ),
    ];
    for (what, url, extra, code, want) in cases {
        let sent = run(url, extra).await;
        let record = sent.records.first().cloned().unwrap_or_default();
        let ok = sent.code == code
            && match want {
                "done" => record["status"] == "done",
                "failed" => record["status"] == "failed",
                "" => true,
                reason => record["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with(reason)),
            };
        if !ok {
            problems.push(format!(
                "{what}: exit {:?}, {record}, stderr {}",
                sent.code, sent.stderr
            ));
        }
        if sent.stderr.contains(&token) || record.to_string().contains(&token) {
            problems.push(format!("{what}: the client printed the token"));
        }
    }
    problems.extend(stop_shells(&mut producer, &mut worker));
    let logs = [
        ("producer", producer.log_text()),
        ("worker", worker.log_text()),
    ];
    for (name, log) in &logs {
        let mut secrets = vec![
            ("the token", token.as_str()),
            ("the S3 secret key", s3_secret.as_str()),
        ];
        if let Some(u) = &user {
            secrets.push(("the broker password", u.password.as_str()));
        }
        for (what, secret) in secrets {
            if let Some(line) = log.lines().find(|l| l.contains(secret)) {
                problems.push(format!("{name} logged {what}: {line}"));
            }
        }
        if log.lines().count() < 10 {
            problems.push(format!("{name} logged almost nothing at debug: {log}"));
        }
    }
    // JSON logs: one object per line, with a level and a message.
    for line in logs[0].1.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v["level"].is_string() && v["timestamp"].is_string() => {}
            _ => {
                problems.push(format!("producer log line is not a JSON event: {line}"));
                break;
            }
        }
    }
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    drop(user);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_end_to_end_through_a_tls_terminating_proxy() {
    let Some(connection) = broker().await else {
        return;
    };
    if amqp_url() != DEFAULT_AMQP {
        skip::<()>("stunnel forwards to 127.0.0.1:5672 only, AMQP_URL points elsewhere");
        return;
    }
    if Command::new("stunnel").arg("-version").output().is_err() || !openssl_available() {
        skip::<()>("stunnel or openssl is missing (scripts/test.sh installs stunnel4)");
        return;
    }
    let dir = TempDir::new("amqps");
    let pki = make_pki(&dir.0);
    let port = free_port();
    let config = dir.0.join("stunnel.conf");
    std::fs::write(
        &config,
        format!(
            "foreground = yes\npid =\n[amqps]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:5672\ncert = {}\nkey = {}\n",
            pki.server_cert.display(),
            pki.server_key.display()
        ),
    )
    .unwrap();
    let mut stunnel_command = Command::new("stunnel");
    stunnel_command
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut stunnel = Service::start("stunnel", stunnel_command);
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "stunnel did not listen"
    );
    let amqps = format!("amqps://guest:guest@localhost:{port}/%2f");
    let ca_pem = std::fs::read_to_string(&pki.ca_cert).unwrap();
    let mut problems = Vec::new();

    // The port speaks TLS only, and only to clients that trust the CA.
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        lapin::Connection::connect(
            &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            lapin::ConnectionProperties::default(),
        ),
    )
    .await;
    if matches!(plain, Ok(Ok(_))) {
        problems.push("a plain AMQP client connected to the TLS port".into());
    }
    let untrusted = tokio::time::timeout(
        Duration::from_secs(10),
        cloudimg_runtime::link::connect(&BrokerSettings::new(&amqps, "x"), "cloudimg-test"),
    )
    .await;
    if matches!(untrusted, Ok(Ok(_))) {
        problems.push("a client that does not trust the test CA connected".into());
    }
    let mut trusted = BrokerSettings::new(&amqps, "x");
    trusted.ca_pem = Some(ca_pem);
    match cloudimg_runtime::link::connect(&trusted, "cloudimg-test").await {
        Ok(c) => {
            let _ = c.close(200, "bye".into()).await;
        }
        Err(e) => problems.push(format!("amqps with CLOUDIMG_AMQP_CA: {e}")),
    }

    // The shells, end to end over amqps.
    let queue = unique_queue("amqps");
    let store = TempDir::new("amqps-store");
    let shells = Shells::new(amqps, &queue, StoreEnv::Dir(store.0.clone()));
    let ca = pki.ca_cert.display().to_string();
    let (mut producer, address) = shells.producer(&[("CLOUDIMG_AMQP_CA", &ca)]);
    let mut worker = shells.worker(&[("CLOUDIMG_AMQP_CA", &ca)]);
    let image = dir.0.join("photo.jpg");
    std::fs::write(&image, fixture_jpeg(160, 120, 2, 30, 90)).unwrap();
    let sent = send_async(
        &address,
        vec![
            "--wait".into(),
            "--timeout".into(),
            "60".into(),
            image.into_os_string(),
        ],
    )
    .await;
    match sent.records.first() {
        Some(r) if sent.code == Some(0) && r["status"] == "done" => {
            let key = r["key"].as_str().unwrap();
            if !store.0.join(key).is_file() {
                problems.push(format!("{key} reported done but missing"));
            }
        }
        _ => problems.push(format!("over amqps: {sent:?}")),
    }
    problems.extend(stop_shells(&mut producer, &mut worker));
    stunnel.kill();
    delete_queues(&connection, &queue).await;
    shells.assert_no_problems(&problems);
}
