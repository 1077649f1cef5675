//! A real S3-compatible server for the off-site backup tests: moto in server mode
//! (PyPI `moto[server]`, installed by `scripts/test.sh` into `.venv-moto`) on a
//! loopback port, with authentication on: an IAM user whose key the tests get, so a
//! wrong secret is refused as S3 refuses it (`SignatureDoesNotMatch`). The tests read
//! the bucket through boto3 (which moto brings), never through the product's client.
//!
//! Killed when dropped; [`S3Server::stop`] and [`S3Server::start_again`] take it away
//! and bring a fresh one back on the same port (moto keeps its data in memory, so the
//! bucket is empty again and the key is new).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// boto3 calls the tests make: `setup` (IAM user, key, policy, bucket), `list`, `get`.
const HELPER: &str = r#"
import json, sys, boto3
from botocore.config import Config
cmd, endpoint = sys.argv[1], sys.argv[2]
cfg = Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"})
def client(service, ak="setup", sk="setup"):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=ak, aws_secret_access_key=sk, config=cfg)
if cmd == "setup":
    bucket = sys.argv[3]
    iam = client("iam")
    iam.create_user(UserName="dynserv")
    iam.put_user_policy(UserName="dynserv", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="dynserv")["AccessKey"]
    ak, sk = key["AccessKeyId"], key["SecretAccessKey"]
    client("s3", ak, sk).create_bucket(Bucket=bucket)
    print(json.dumps({"access_key": ak, "secret_key": sk}))
elif cmd == "list":
    bucket, prefix, ak, sk = sys.argv[3:7]
    s3 = client("s3", ak, sk)
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [{"key": o["Key"], "size": o["Size"]} for o in page.get("Contents", [])]
    print(json.dumps(out))
elif cmd == "get":
    bucket, key, ak, sk, path = sys.argv[3:8]
    client("s3", ak, sk).download_file(bucket, key, path)
    print("{}")
"#;

/// Requests moto serves before it checks signatures: the setup's four.
const SETUP_REQUESTS: &str = "4";

/// A moto S3 server on a loopback port with one bucket and one access key.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

fn venv_bin() -> PathBuf {
    let bin = std::env::var_os("DYNSERV_TEST_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join(".venv-moto"))
        .join("bin");
    assert!(
        bin.join("moto_server").is_file(),
        "moto is not installed at {}: run {} (it creates .venv-moto with `pip install 'moto[server]'`), or set DYNSERV_TEST_MOTO_VENV",
        bin.display(),
        crate::TEST_COMMAND
    );
    bin
}

impl S3Server {
    /// Starts moto and creates `bucket` with a key allowed everything.
    pub fn start(bucket: &str) -> S3Server {
        let port = crate::free_tcp_port();
        let mut server = S3Server {
            child: None,
            port,
            dir: tempfile::tempdir().expect("a temp dir"),
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_string(),
            access_key: String::new(),
            secret_key: String::new(),
        };
        server.start_again();
        server
    }

    /// Starts a fresh server on the same port (after [`S3Server::stop`]): an empty
    /// bucket of the same name and a new key.
    pub fn start_again(&mut self) {
        self.stop();
        std::fs::write(self.dir.path().join("helper.py"), HELPER).expect("writing helper.py");
        let log = std::fs::File::create(self.dir.path().join("moto.log")).expect("moto.log");
        let child = Command::new(venv_bin().join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", SETUP_REQUESTS)
            .stdout(Stdio::from(log.try_clone().expect("moto.log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting moto_server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not listen on port {} within 60 s: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let keys = self.helper(&["setup", &self.endpoint.clone(), &self.bucket.clone()]);
        self.access_key = keys["access_key"].as_str().expect("access_key").to_string();
        self.secret_key = keys["secret_key"].as_str().expect("secret_key").to_string();
    }

    /// Kills the server: requests to its port are refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        crate::log_tail(&self.dir.path().join("moto.log"), 40)
    }

    fn helper(&self, args: &[&str]) -> Value {
        let out = Command::new(venv_bin().join("python"))
            .arg(self.dir.path().join("helper.py"))
            .args(args)
            .output()
            .expect("running the boto3 helper");
        assert!(
            out.status.success(),
            "boto3 {args:?}: {}\nmoto: {}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("the helper prints JSON")
    }

    /// The objects under `prefix`: `[{"key", "size"}]`.
    pub fn list(&self, prefix: &str) -> Vec<Value> {
        let listed = self.helper(&[
            "list",
            &self.endpoint,
            &self.bucket,
            prefix,
            &self.access_key,
            &self.secret_key,
        ]);
        listed.as_array().cloned().unwrap_or_default()
    }

    /// The bytes of one object.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let path = self.dir.path().join("object");
        self.helper(&[
            "get",
            &self.endpoint,
            &self.bucket,
            key,
            &self.access_key,
            &self.secret_key,
            &path.to_string_lossy(),
        ]);
        std::fs::read(&path).expect("reading the downloaded object")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("moto log:\n{}", self.log());
        }
        self.stop();
    }
}
