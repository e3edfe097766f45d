//! A real PostgreSQL server for the suite: one throwaway cluster per test
//! run (initdb into a temporary directory, password authentication), on a
//! free loopback port, and one database per test. `scripts/setup.sh`
//! installs the server from Debian's packages; `SKYWEAVE_PG_BIN` points at
//! another installation's `bin` directory.
//!
//! The server runs under a shell that holds a pipe from this process: when
//! the test binary exits, however it exits, the pipe closes and the shell
//! stops the server and removes the cluster.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct Postgres {
    port: u16,
    bin: PathBuf,
    password: String,
    /// Keeps the server's stdin open; dropped only at exit.
    _guard: Mutex<Child>,
}

const USER: &str = "skyweave";

/// The suite's server, started at the first call.
pub fn server() -> &'static Postgres {
    static SERVER: OnceLock<Postgres> = OnceLock::new();
    SERVER.get_or_init(start)
}

impl Postgres {
    /// A fresh, empty database; its URL (with the password).
    pub fn database(&self) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name =
            format!("test_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}:{}@127.0.0.1:{}/{database}", self.password, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// Runs SQL with psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", database, "-c", sql])
            .env("PGPASSWORD", &self.password)
            .output()
            .expect("run psql");
        assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SKYWEAVE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server found under /usr/lib/postgresql\n    fix: run `bash \
             scripts/setup.sh` (it installs Debian's postgresql), or set SKYWEAVE_PG_BIN"
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// PostgreSQL refuses to run as root: as root, run it as `postgres`.
fn as_server_user(program: &Path) -> Command {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn start() -> Postgres {
    let bin = bin_dir();
    let base = std::env::temp_dir().join(format!("skyweave-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let mut random = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut random)
        .unwrap();
    let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let pwfile = base.join("pwfile");
    std::fs::File::create(&pwfile).unwrap().write_all(password.as_bytes()).unwrap();
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&base).status();
        assert!(status.is_ok_and(|s| s.success()), "chown the cluster directory to postgres");
    }
    let data = base.join("data");
    let output = as_server_user(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", USER, "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .output()
        .expect("run initdb");
    assert!(output.status.success(), "initdb: {}", String::from_utf8_lossy(&output.stderr));
    let port = free_port();
    // The shell stops the server when our end of its stdin closes.
    let script = format!(
        "'{postgres}' -D '{data}' -p {port} -k '{base}' -c listen_addresses=127.0.0.1 -c \
         fsync=off -c max_connections=200 >'{base}/server.log' 2>&1 &\n\
         pid=$!\nread _\nkill -INT $pid\nwait $pid\nrm -rf '{base}'\n",
        postgres = bin.join("postgres").display(),
        data = data.display(),
        base = base.display(),
    );
    let guard = as_server_user(Path::new("/bin/sh"))
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres");
    let server = Postgres { port, bin, password, _guard: Mutex::new(guard) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new(server.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(base.join("server.log")).unwrap_or_default();
            panic!("PostgreSQL did not start on port {port}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}
