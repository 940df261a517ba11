//! Who may query: with a query password file every request but `/health` needs a user of it
//! (HTTP basic authentication, asked with curl as a user would); beyond loopback without one,
//! `serve` does not start unless that is allowed explicitly; with a certificate, HTTPS only.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::endpoint::add_user;
use crate::support::{free_port, make_certificates, wait_for_port};

/// A `serve` process, killed when dropped.
pub(crate) struct Serve(Child);

impl Serve {
    /// Its PostgreSQL port is a free one unless `extra` names it.
    pub(crate) fn start(data: &Path, http_listen: &str, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_twinlake"));
        command.arg("serve");
        if !extra.contains(&"--pg-listen") {
            command.args(["--pg-listen", &format!("127.0.0.1:{}", free_port())]);
        }
        let child = command
            .arg("--data-dir")
            .arg(data)
            .args(["--http-listen", http_listen])
            .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
            .args(extra)
            .env("RUST_LOG", "warn,buoyant_kernel=off")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start twinlake serve");
        Self(child)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The status code and body curl gets for `url` with `args`.
pub(crate) fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// `serve` in `dir` with one user of its query password file, ana (password s3cret), once its
/// HTTP port listens; and that port.
pub(crate) fn serve_with_a_user(dir: &Path) -> (Serve, u16) {
    let users = dir.join("query-users");
    add_user(&users, "ana", "s3cret", false);
    let port = free_port();
    let serve = Serve::start(
        &dir.join("data"),
        &format!("127.0.0.1:{port}"),
        &["--query-password-file", users.to_str().unwrap()],
    );
    wait_for_port(port, "twinlake");
    (serve, port)
}

#[test]
fn queries_need_a_user_of_the_query_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, port) = serve_with_a_user(dir.path());
    let query = format!("http://127.0.0.1:{port}/api/v1/query?sql=SELECT%2041%2B1%20AS%20answer");

    let (status, body) = curl(&query, &["-D", "-"]);
    assert_eq!(status, 401, "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"twinlake\""),
        "{body}"
    );
    assert_eq!(curl(&query, &["-u", "ana:wrong"]).0, 401);
    assert_eq!(curl(&query, &["-u", "bob:s3cret"]).0, 401);
    let (status, body) = curl(&query, &["-u", "ana:s3cret"]);
    assert_eq!((status, body.trim()), (200, r#"[{"answer":42}]"#));
    // Metrics say much about a fleet: only for users too. Health is for load balancers.
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    assert_eq!(curl(&metrics, &[]).0, 401);
    assert_eq!(curl(&metrics, &["-u", "ana:s3cret"]).0, 200);
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/health"), &[]).0, 200);
    // Exports too, from the API and the CLI (the user in the server's URL).
    let exports = format!("http://127.0.0.1:{port}/api/v1/export");
    let out = dir.path().join("export");
    let request = format!(r#"{{"out": "{}"}}"#, out.display());
    let post = [
        "-H",
        "Content-Type: application/json",
        "--data",
        request.as_str(),
    ];
    assert_eq!(curl(&exports, &post).0, 401);
    assert_eq!(curl(&exports, &[]).0, 401);
    assert!(!out.exists(), "an anonymous export wrote {}", out.display());
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_twinlake"))
        .args([
            "export",
            "--url",
            &format!("http://ana:s3cret@127.0.0.1:{port}"),
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(out.join("_manifest.json").is_file());
    let (status, listed) = curl(&exports, &["-u", "ana:s3cret"]);
    assert_eq!(status, 200, "{listed}");
    assert!(listed.contains(r#""state":"succeeded""#), "{listed}");

    // The file is read again when it changes: a user added while serving gets in.
    add_user(&dir.path().join("query-users"), "bob", "hunter2", false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while curl(&query, &["-u", "bob:hunter2"]).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "a user added to the file was not let in"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn the_http_api_beyond_loopback_needs_users_or_an_explicit_yes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let mut refused = Serve::start(&dir.path().join("data"), &listen, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = refused.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve answers anyone on {listen}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(refused.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "serve answered anyone on {listen}");
    assert!(stderr.contains("--http-allow-anonymous true"), "{stderr}");

    let _allowed = Serve::start(
        &dir.path().join("data"),
        &listen,
        &["--http-allow-anonymous", "true"],
    );
    wait_for_port(port, "twinlake");
    let health = format!("http://127.0.0.1:{port}/api/v1/query?sql=SELECT%201%20AS%20one");
    assert_eq!(curl(&health, &[]).0, 200);
}

#[test]
fn the_http_api_speaks_https_with_a_certificate_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let cert = dir.path().join("broker.pem").display().to_string();
    let key = dir.path().join("broker.key").display().to_string();
    let ca = dir.path().join("ca.pem").display().to_string();
    let port = free_port();
    let _serve = Serve::start(
        &dir.path().join("data"),
        &format!("127.0.0.1:{port}"),
        &["--http-tls-cert", &cert, "--http-tls-key", &key],
    );
    wait_for_port(port, "twinlake");
    let path = format!("127.0.0.1:{port}/api/v1/query?sql=SELECT%2041%2B1%20AS%20answer");
    let (status, body) = curl(&format!("https://{path}"), &["--cacert", &ca]);
    assert_eq!((status, body.trim()), (200, r#"[{"answer":42}]"#));
    // No plaintext beside it, and a client that does not trust the certificate gets nothing.
    assert_eq!(curl(&format!("http://{path}"), &[]).0, 0);
    assert_eq!(curl(&format!("https://{path}"), &[]).0, 0);

    let missing = dir.path().join("missing.key").display().to_string();
    let mut refused = Serve::start(
        &dir.path().join("data2"),
        &format!("127.0.0.1:{}", free_port()),
        &["--http-tls-cert", &cert, "--http-tls-key", &missing],
    );
    let status = refused.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(refused.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        !status.success(),
        "serve started with a key that is not there"
    );
    assert!(stderr.contains("HTTP API TLS"), "{stderr}");
}
