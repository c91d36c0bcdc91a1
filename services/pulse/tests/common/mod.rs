//! What the CLI tests share: running the real `pulse` binary against a test environment.

use std::process::Command;

use pulse_tests::TestEnv;

pub const BIN: &str = env!("CARGO_BIN_EXE_pulse");

/// What one `pulse` command printed, and its exit code.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `pulse ARGS` against `env`'s API, as the user `alice`.
pub async fn pulse(env: &TestEnv, args: &[&str]) -> anyhow::Result<Out> {
    let (url, key) = (env.base.clone(), env.key.clone());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env("PULSE_URL", url)
            .env("PULSE_API_KEY", key)
            .env("USER", "alice")
            .output()
    })
    .await??;
    Ok(Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
