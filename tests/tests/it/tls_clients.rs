//! PostgreSQL, RabbitMQ and Redis over TLS, as managed services require, with a private CA
//! (`PULSE_TLS_CA_FILE`) and certificates verified. Each test runs its own TLS endpoint:
//! a PostgreSQL instance with `ssl = on` (Debian's binaries, `initdb` in a temporary directory),
//! a Redis with `tls-port` (Debian's redis-server), and, since the shared RabbitMQ cannot grow a
//! TLS listener without a restart that would disturb the other tests, a TLS-terminating proxy in
//! front of it (the client side is the same: `amqps://`, rustls, the CA).

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lapin::{
    BasicProperties,
    options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use pulse_shared::{db, messaging, pause::PauseFlags, state::SequenceStatus};
use pulse_tests::{free_port, isolated_settings, tls::TestCa};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// Waits until `port` on loopback accepts connections.
async fn listening(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn redis_over_tls_trusts_the_private_ca_and_refuses_without_it() -> anyhow::Result<()> {
    let tls = TestCa::generate()?;
    let port = free_port()?;
    let _redis: Child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--tls-cert-file", &tls.cert_path().display().to_string()])
        .args(["--tls-key-file", &tls.key_path().display().to_string()])
        .args(["--tls-ca-cert-file", &tls.ca_path().display().to_string()])
        .args(["--tls-auth-clients", "no"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server with a TLS port")?;
    listening(port, "redis-server").await?;

    let mut settings = isolated_settings("tls_redis");
    settings.redis_url = format!("rediss://127.0.0.1:{port}/");
    settings.tls_ca_file = Some(tls.ca_path());
    let flags = PauseFlags::connect_for(&settings, Duration::from_secs(5)).await?;
    let sequence = Uuid::new_v4();
    flags.set(sequence, SequenceStatus::Paused).await?;
    flags.ping().await?;

    // The webpki roots alone do not trust the test CA.
    settings.tls_ca_file = None;
    let refused = PauseFlags::connect_for(&settings, Duration::from_millis(500)).await;
    assert!(refused.is_err(), "an untrusted certificate was accepted");
    Ok(())
}

#[tokio::test]
async fn rabbitmq_over_tls_trusts_the_private_ca_and_refuses_without_it() -> anyhow::Result<()> {
    let tls = TestCa::generate()?;
    let (port, _proxy) = tls.proxy("127.0.0.1:5672".parse()?).await?;
    let mut settings = isolated_settings("tls_amqp");
    settings.amqp_url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
    settings.tls_ca_file = Some(tls.ca_path());

    let conn = messaging::connect_for(&settings).await?;
    let channel = conn.create_channel().await?;
    let queue = settings.queue.clone();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"over tls",
            BasicProperties::default(),
        )
        .await?
        .await?;
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(m) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await?
            {
                return anyhow::Ok(m.delivery.data.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    assert_eq!(got, b"over tls");
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "done".into()).await?;

    settings.tls_ca_file = None;
    assert!(
        messaging::connect_for(&settings).await.is_err(),
        "an untrusted certificate was accepted"
    );
    Ok(())
}

/// A PostgreSQL instance of its own, with `ssl = on` and the test certificate.
struct Postgres {
    port: u16,
    _child: Child,
    _data: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Postgres {
    async fn start(tls: &TestCa) -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL binaries under /usr/lib/postgresql")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max_by_key(|p| {
                p.parent()
                    .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .context("no initdb under /usr/lib/postgresql")?;
        let data = TempDir(std::env::temp_dir().join(format!("pulse-pg-tls-{}", Uuid::new_v4())));
        std::fs::create_dir_all(&data.0)?;
        let cert = data.0.join("server.crt");
        let key = data.0.join("server.key");
        std::fs::copy(tls.cert_path(), &cert)?;
        std::fs::copy(tls.key_path(), &key)?;
        let pgdata = data.0.join("data");
        // PostgreSQL refuses to run as root: as root, run it as the postgres user (directly,
        // so that killing the child kills the server).
        let root = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
        };
        let owner = if root { Some(postgres_ids()?) } else { None };
        if let Some((uid, gid)) = owner {
            for path in [&data.0, &cert, &key] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
            }
        }
        let command = |program: PathBuf| {
            let mut c = Command::new(program);
            if let Some((uid, gid)) = owner {
                c.uid(uid).gid(gid);
            }
            c
        };
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let status = command(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&pgdata)
            .stdout(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "initdb failed");
        let port = free_port()?;
        let child = command(bin.join("postgres"))
            .arg("-D")
            .arg(&pgdata)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", data.0.display()),
            ])
            .args(["-c", "ssl=on", "-c", "fsync=off"])
            .args(["-c", &format!("ssl_cert_file={}", cert.display())])
            .args(["-c", &format!("ssl_key_file={}", key.display())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting postgres")?;
        listening(port, "postgres").await?;
        Ok(Self {
            port,
            _child: child,
            _data: data,
        })
    }
}

/// The uid and gid of the postgres user, from /etc/passwd.
fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .context("no postgres user in /etc/passwd")?;
    let fields: Vec<&str> = line.split(':').collect();
    anyhow::ensure!(fields.len() > 3, "odd /etc/passwd line {line:?}");
    Ok((fields[2].parse()?, fields[3].parse()?))
}

#[tokio::test]
async fn postgres_verify_full_trusts_the_private_ca_and_refuses_without_it() -> anyhow::Result<()> {
    let tls = TestCa::generate()?;
    let pg = Postgres::start(&tls).await?;
    let mut settings = isolated_settings("tls_pg");
    settings.database_url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full",
        pg.port
    );
    settings.tls_ca_file = Some(tls.ca_path());
    let pool = db::pool_for(&settings, 1)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let ssl: bool = loop {
        match sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
        {
            Ok(ssl) => break ssl,
            // The server listens a moment before it accepts logins.
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "postgres not ready yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert!(ssl, "the connection is not encrypted");
    pool.close().await;

    settings.tls_ca_file = None;
    let untrusted = db::pool_for(&settings, 1)?;
    let refused = sqlx::query("SELECT 1").execute(&untrusted).await;
    assert!(refused.is_err(), "an untrusted certificate was accepted");
    Ok(())
}
