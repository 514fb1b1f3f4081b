//! A background process in a pod, killed on drop, with stdout/stderr kept in files for diagnosis.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A running process. Dropping it kills it (SIGKILL) and reaps it.
pub struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr written to `<log_base>.out` / `<log_base>.err`.
    pub(crate) fn start(name: &str, mut cmd: Command, log_base: PathBuf) -> anyhow::Result<Proc> {
        let stdout = log_base.with_extension("out");
        let stderr = log_base.with_extension("err");
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until stdout contains `needle`, failing early if the process exits.
    pub fn wait_for_stdout(&mut self, needle: &str, limit: Duration) -> anyhow::Result<()> {
        self.wait_until(limit, |p| p.stdout().contains(needle))
            .with_context(|| format!("{} never printed {needle:?}", self.name))
    }

    /// Polls `ready` until it holds, failing if the process exits or `limit` passes.
    pub fn wait_until(
        &mut self,
        limit: Duration,
        mut ready: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if ready(self) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            if start.elapsed() > limit {
                bail!(
                    "{} not ready after {limit:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > limit {
                bail!("{} still running {limit:?} after SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "--- {} (pid {}) stdout:\n{}\n--- {} stderr:\n{}",
            self.name,
            self.pid(),
            self.stdout(),
            self.name,
            self.stderr()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
