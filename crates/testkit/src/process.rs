//! Child processes that cannot outlive their owner.
//!
//! Each component runs under a small `sh` lifeline whose stdin is a pipe from this process. The
//! lifeline starts the component, and when the pipe closes — because the handle was dropped,
//! the test panicked, or this process died, even by SIGKILL — it sends the component SIGTERM,
//! then SIGKILL after 3 s (test data is disposable), and removes the component's scratch directory. When the
//! component exits by itself, the lifeline exits with its status, so early crashes are visible.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::Error;

/// `$1` is the directory to remove afterwards (or empty), the rest is the command.
const LIFELINE: &str = r#"
cleanup_dir=$1; shift
exec 3<&0
"$@" </dev/null 3<&- &
child=$!
( read -r _ <&3
  kill -TERM "$child" 2>/dev/null
  i=0
  while kill -0 "$child" 2>/dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$child" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$child"
status=$?
kill "$watcher" 2>/dev/null
[ -n "$cleanup_dir" ] && rm -rf "$cleanup_dir"
exit $status
"#;

/// Set in the environment of every process started here (the lifeline and the component), so
/// that `hack/no-orphans.sh` finds leftovers whatever binary they run.
pub const CHILD_MARKER: (&str, &str) = ("TALOS_CAPI_TESTKIT_CHILD", "1");

/// Go's garbage collector for the harness's own Go components (etcd, kube-apiserver, the
/// Cluster API core). A test run on 2 cores is CPU-bound, and at Go's default (GOGC=100)
/// collection is most of kube-apiserver's CPU under our tests: the bootstrap test binary alone
/// took kube-apiserver 110 CPU-seconds at GOGC=100 and 37 at GOGC=400 (wall time 103 s and 61 s;
/// docs/benchmarks.md). GOGC=400 trades memory for CPU (kube-apiserver peaked at 1.8 GiB there);
/// the soft limit of 3 GiB per process stays well above the live heap, since a limit near it
/// makes Go collect without end (1 GiB did: one kube-apiserver took 286 CPU-seconds). The peers
/// (CABPT, CACPPT) keep Go's defaults: their memory is compared with ours. A GOGC or GOMEMLIMIT
/// in the environment wins.
pub const LIGHT_GC: [(&str, &str); 2] = [("GOGC", "400"), ("GOMEMLIMIT", "3GiB")];

/// A running component. Dropping it stops the component and waits for it. Shared freely:
/// every method takes `&self`.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    log: PathBuf,
    pid: u32,
    lifeline: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ManagedProcess {
    /// Start `program args` with stdout and stderr appended to `log`. `cleanup_dir`, if given,
    /// is removed once the component has exited.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        cleanup_dir: Option<&Path>,
    ) -> Result<Self, Error> {
        Self::spawn_with_env(name, (program, args), &[], log, cleanup_dir)
    }

    /// [`Self::spawn`], with `env` set for the component where this process's environment does
    /// not set it.
    pub fn spawn_with_env(
        name: &str,
        (program, args): (&Path, &[String]),
        env: &[(&str, &str)],
        log: &Path,
        cleanup_dir: Option<&Path>,
    ) -> Result<Self, Error> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(Error::io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(Error::io(format!("opening {}", log.display())))?;
        let mut lifeline = Command::new("sh")
            .arg("-c")
            .arg(LIFELINE)
            .arg("lifeline")
            .arg(cleanup_dir.map(Path::as_os_str).unwrap_or_default())
            .arg(program)
            .args(args)
            .env(CHILD_MARKER.0, CHILD_MARKER.1)
            .envs(
                env.iter()
                    .filter(|(key, _)| std::env::var_os(key).is_none())
                    .copied(),
            )
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C aimed at the test runner reaches the runner, whose
            // exit then stops every component through the lifeline, in order.
            .process_group(0)
            .spawn()
            .map_err(Error::io(format!("starting {}", program.display())))?;
        let stdin = lifeline.stdin.take();
        Ok(ManagedProcess {
            name: name.to_owned(),
            log: log.to_path_buf(),
            pid: lifeline.id(),
            lifeline: Mutex::new(lifeline),
            stdin: Mutex::new(stdin),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The lifeline's pid (the component itself is its only child).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `Err(ProcessExited)` with the log's tail if the component has already exited.
    pub fn check_running(&self) -> Result<(), Error> {
        match locked(&self.lifeline).try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::ProcessExited {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log.clone(),
                tail: tail(&self.log, 30),
            }),
            Err(e) => Err(Error::io(format!("checking {}", self.name))(e)),
        }
    }

    /// SIGKILL the component (not its lifeline), as a crash or an OOM kill would end it, and wait
    /// for the lifeline to see it exit.
    pub fn kill_component(&self) -> Result<(), Error> {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid))
            .map_err(Error::io(format!("finding the {} process", self.name)))?;
        for child in children.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.trim() != "sh" {
                std::process::Command::new("kill")
                    .args(["-KILL", child])
                    .status()
                    .map_err(Error::io(format!("killing {}", self.name)))?;
            }
        }
        if !matches!(
            wait_exit(&mut locked(&self.lifeline), Duration::from_secs(10)),
            Ok(None)
        ) {
            return Ok(());
        }
        Err(Error::io(format!("killing {}", self.name))(
            std::io::Error::other("still running 10 s after SIGKILL"),
        ))
    }

    /// Stop the component and wait for it to exit (at most ~15 s).
    pub fn stop(&self) {
        drop(locked(&self.stdin).take());
        let mut lifeline = locked(&self.lifeline);
        if !matches!(wait_exit(&mut lifeline, Duration::from_secs(15)), Ok(None)) {
            return;
        }
        let _ = lifeline.kill();
        let _ = lifeline.wait();
    }
}

/// Wait at most `within` for `child` to exit: its status, or `None` while it still runs. (A
/// blocking wait: for a test's own child processes, and the lifelines here.)
pub fn wait_exit(
    child: &mut Child,
    within: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free TCP port on 127.0.0.1. The port is released before returning, so a component that
/// fails to bind it (a rare race with another process) is restarted by the caller.
pub fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(Error::Port)?;
    listener.local_addr().map(|a| a.port()).map_err(Error::Port)
}

/// What a finished command said: its status, and stdout and stderr together.
#[derive(Debug)]
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    /// stdout then stderr, for messages.
    pub output: String,
}

/// Run `program args` to completion with `env` added and `stdin` fed to it.
pub fn run(program: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Result<Ran, Error> {
    use std::io::Write;
    let what = || format!("running {}", program.display());
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io(what()))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .map_err(Error::io(what()))?;
    }
    let o = child.wait_with_output().map_err(Error::io(what()))?;
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    Ok(Ran {
        ok: o.status.success(),
        output: format!("{stdout}{}", String::from_utf8_lossy(&o.stderr)),
        stdout,
    })
}

/// A plain HTTP/1.1 GET on loopback `port` (a probe, /metrics): the status code and the body;
/// `None` when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((code, body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a test failure
    use super::*;

    #[test]
    fn a_component_gets_the_environment_given_unless_ours_sets_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("env.log");
        // PATH is set here, so the one given is not used.
        let env = [("TALOS_CAPI_TEST_GIVEN", "given"), ("PATH", "/given")];
        let process = ManagedProcess::spawn_with_env(
            "env",
            (Path::new("/usr/bin/env"), &[]),
            &env,
            &log,
            None,
        )
        .unwrap();
        let status = wait_exit(&mut locked(&process.lifeline), Duration::from_secs(60)).unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "env exited: {status:?}"
        );
        let printed = std::fs::read_to_string(&log).unwrap();
        assert!(
            printed.lines().any(|l| l == "TALOS_CAPI_TEST_GIVEN=given"),
            "{printed}"
        );
        assert!(!printed.lines().any(|l| l == "PATH=/given"), "{printed}");
        assert!(
            printed.lines().any(|l| l == "TALOS_CAPI_TESTKIT_CHILD=1"),
            "{printed}"
        );
    }
}
