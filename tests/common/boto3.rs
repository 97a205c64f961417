//! A test's S3 storage as an S3 client independent of the gateway's sees it: boto3 (in the
//! tests' venv, with moto) on the bucket of a [`TestS3`], or on its prefix of the
//! `SFTPGATE_TEST_S3_URL` bucket. Tests compare what the server holds with this, never
//! with the gateway's own client.

use std::path::Path;

use super::s3::TestS3;
use super::{python, text};

/// A test's bucket (or prefix, on an external endpoint).
pub struct Bucket {
    pub s3: TestS3,
    pub name: String,
    /// The key prefix objects are under, with its trailing `/` (empty on moto).
    pub prefix: String,
}

impl Bucket {
    pub fn new() -> Bucket {
        let s3 = TestS3::new();
        let path = s3.url.trim_start_matches("s3://").to_string();
        let (name, prefix) = match path.split_once('/') {
            Some((b, p)) => (b.to_string(), format!("{}/", p.trim_matches('/'))),
            None => (path, String::new()),
        };
        Bucket { s3, name, prefix }
    }

    /// Runs `body` with `s3` (a boto3 client on the endpoint, in the gateway's region:
    /// botocore itself reads only `AWS_DEFAULT_REGION`), `BUCKET`, `PREFIX` and `ARGS` (the
    /// script's arguments) set; its output.
    pub fn boto3(&self, body: &str, args: &[&str]) -> String {
        let script = format!(
            "import os, sys, boto3\n\
             region = os.environ.get('AWS_REGION') or os.environ.get('AWS_DEFAULT_REGION')\n\
             s3 = boto3.client('s3', endpoint_url={endpoint}, region_name=region)\n\
             BUCKET = {bucket:?}\nPREFIX = {prefix:?}\nARGS = sys.argv[1:]\n{body}",
            endpoint = self
                .s3
                .endpoint
                .as_ref()
                .map_or("None".to_string(), |e| format!("{e:?}")),
            bucket = self.name,
            prefix = self.prefix,
        );
        let out = std::process::Command::new(python())
            .arg("-c")
            .arg(&script)
            .args(args)
            .envs(self.s3.env())
            .output()
            .unwrap();
        assert!(out.status.success(), "boto3: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Writes the object at `key` (under the prefix) to `to`; false if there is none.
    pub fn download(&self, key: &str, to: &Path) -> bool {
        let out = self.boto3(
            "try:\n    body = s3.get_object(Bucket=BUCKET, Key=PREFIX + ARGS[0])['Body']\n\
             except s3.exceptions.NoSuchKey:\n    print('none'); raise SystemExit\n\
             with open(ARGS[1], 'wb') as f:\n    for chunk in body.iter_chunks(1 << 20):\n        f.write(chunk)\n\
             print('ok')\n",
            &[key, to.to_str().unwrap()],
        );
        out.trim() == "ok"
    }

    /// The keys of the multipart uploads in progress under the prefix, as the server lists
    /// them.
    pub fn pending_uploads(&self) -> Vec<String> {
        self.keys("list_multipart_uploads", "Uploads")
    }

    /// The keys of the objects under the prefix.
    pub fn objects(&self) -> Vec<String> {
        self.keys("list_objects_v2", "Contents")
    }

    /// The keys boto3's `call` lists under the prefix, in its answer's `field`.
    fn keys(&self, call: &str, field: &str) -> Vec<String> {
        let out = self.boto3(
            &format!(
                "r = s3.{call}(Bucket=BUCKET, Prefix=PREFIX)\n\
                 for x in r.get('{field}', []):\n    print(x['Key'])\n"
            ),
            &[],
        );
        out.lines().map(str::to_string).collect()
    }
}
