//! The gateway's HTTP side from a test: the operator API and the customer's calls by
//! curl (as the reference's samples send them), the metrics page, the reasons of a
//! refusal, and a receiver for the upload hook.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{text, ClientKey, Gateway, TOKEN};

impl Gateway {
    /// The customer's upload call (`POST /database/v1/upload`), as the reference's curl
    /// sample sends it: `body` (a file) with `query` (`request=..&key=..`, any `offset=`)
    /// and the `headers` given besides its `Content-Type`; the HTTP status and the JSON
    /// answer.
    pub fn upload_post(&self, query: &str, body: &Path, headers: &[&str]) -> (u16, Value) {
        let extra: Vec<&str> = headers.iter().flat_map(|h| ["-H", h]).collect();
        let out = Command::new("curl")
            .args([
                "-sS",
                "-w",
                "\n%{http_code}",
                "-H",
                "Content-Type: application/octet-stream",
            ])
            .args(&extra)
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(format!("http://{}/database/v1/upload?{query}", self.admin))
            .output()
            .unwrap();
        let all = text(&out.stdout);
        let (json, code) = all
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("curl said {all:?} {}", text(&out.stderr)));
        let json = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json:?}"));
        (code.trim().parse().unwrap(), json)
    }

    /// The customer's `request_sftp_access` as the reference's curl sample sends it: a
    /// multipart form of `form` (a value `@path` is a file), `query` (`?request=..&key=..`)
    /// after the route; returns the parsed JSON answer.
    pub fn request_sftp_access(&self, form: &[(&str, &str)], query: &str) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", "POST"]);
        for (k, v) in form {
            cmd.args(["-F", &format!("{k}={v}")]);
        }
        cmd.arg(format!(
            "http://{}/database/v1/request_sftp_access{query}",
            self.admin
        ));
        let out = cmd.output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
    }

    /// Calls the operator API with curl; returns (HTTP status, parsed JSON body).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.api_raw(
            method,
            path,
            body.map(|b| b.to_string()).as_deref(),
            Some(TOKEN),
        )
    }

    pub fn api_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        cmd.arg(format!("http://{}{}", self.admin, path));
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("curl output {text:?}"));
        let json =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("non-JSON body {body:?} ({e})"));
        (code.trim().parse().unwrap(), json)
    }

    /// `GET /v1/requests/{id}/original` into `to`, with a `Range` header if given; the
    /// status.
    pub fn original(&self, id: u64, range: Option<&str>, to: &Path) -> u16 {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o"]).arg(to).args([
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
        ]);
        if let Some(r) = range {
            cmd.args(["-H", &format!("Range: {r}")]);
        }
        let out = cmd
            .arg(format!("http://{}/v1/requests/{id}/original", self.admin))
            .output()
            .unwrap();
        text(&out.stdout).trim().parse().unwrap()
    }

    /// Uploads `file` as the upgraded dump of request `id`.
    pub fn push_upgraded(&self, id: u64, file: &Path) -> u16 {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "PUT",
                "-H",
                &format!("Authorization: Bearer {TOKEN}"),
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("http://{}/v1/requests/{id}/upgraded", self.admin))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Creates request `id` in draft with `key` as its only authorized key.
    pub fn provision(&self, id: u64, filename: &str, key: &ClientKey) {
        let body = serde_json::json!({"filename": filename, "key": format!("secret-{id}"), "ssh_keys": key.public()});
        let (code, json) = self.api("PUT", &format!("/v1/requests/{id}"), Some(&body));
        assert_eq!(code, 200, "{json}");
    }

    /// Pushes `upgraded` as request `id`'s upgraded dump and moves it to done; returns the
    /// record.
    pub fn finish(&self, id: u64, upgraded: &Path) -> Value {
        assert_eq!(self.push_upgraded(id, upgraded), 200);
        let (code, json) = self.set_state(id, "done");
        assert_eq!(code, 200, "{json}");
        json["request"].clone()
    }

    pub fn set_state(&self, id: u64, state: &str) -> (u16, Value) {
        self.api(
            "POST",
            &format!("/v1/requests/{id}/state"),
            Some(&serde_json::json!({"state": state})),
        )
    }

    /// Live SSH sessions of request `id`, as the operator API reports them.
    pub fn sessions(&self, id: u64) -> u64 {
        self.api("GET", &format!("/v1/requests/{id}"), None).1["request"]["sessions"]
            .as_u64()
            .unwrap_or(0)
    }

    /// The value of `sftpgate_<name>` on the metrics page (0 if absent).
    pub fn metric(&self, name: &str) -> u64 {
        let out = Command::new("curl")
            .args(["-sS", &format!("http://{}/metrics", self.admin)])
            .output()
            .unwrap();
        let page = text(&out.stdout);
        let prefix = format!("sftpgate_{name} ");
        page.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

/// The `reason` of each failure in a response body, in order.
pub fn reasons(v: &Value) -> Vec<String> {
    v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap().to_string())
        .collect()
}

/// A one-connection-at-a-time HTTP server that records request bodies: the upload hook's
/// receiver. Returns its URL and the bodies it received, parsed.
pub fn hook_server() -> (String, std::sync::mpsc::Receiver<Value>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
        }
    });
    (url, rx)
}
