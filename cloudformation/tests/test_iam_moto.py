"""The shells' S3 paths under the template's own IAM statements, enforced by a second moto server.

A moto server of its own (never the shared one) starts with IAM enforcement off, gets a bucket and
two IAM users whose inline policies are the S3 statements of WorkerRole and ProducerRole, extracted
from template.yaml now (not copied), then turns enforcement on (POST /moto-api/reset-auth 0: from
then on every request needs a signature from a known user and a policy that allows it; a denied
call answers 403). The real binaries then run with those users' keys against the local RabbitMQ:

- a staged upload (at the producer's default CLOUDIMG_STAGE_OVER_BYTES, 64 KiB, a photo is staged):
  producer PutObject on staging/, worker GetObject on staging/, PutObject on gray/, DeleteObject on
  staging/, producer HeadObject on gray/ (GetJob);
- a staged upload over 16 MiB, sent as an S3 multipart upload (CreateMultipartUpload, UploadPart
  and CompleteMultipartUpload are all authorised as s3:PutObject);
- redeliveries: before any worker runs, a consumer takes two jobs and drops its connection without
  an ack (what a SIGKILLed worker leaves), so the worker gets them redelivered and asks HeadObject
  on gray/<id> first (the call issue 14 found denied); the first has no result and is converted,
  the second's result was written (with the worker's keys) before the consumer died: the worker
  acks it without writing (object, ETag, Last-Modified and metadata unchanged, no PUT in moto's
  log, `cloudimg_jobs_total{outcome="already_done"}` 1) and deletes its staged upload;
- a dead letter: a file that is not an image; worker PutObject on failed/, producer GetObject on
  failed/ (GetJob reports the failure).

Action names: moto 5.2.1 authorises HEAD on an object as s3:GetObject, as AWS does
(moto/s3/responses.py, ACTION_MAP["KEY"]["HEAD"]), so no translation is applied. What moto does
not evaluate (conditions such as the s3:prefix one on ListBucket, 403 versus 404 for a missing key
without ListBucket, bucket policies) is listed in docs/aws.md as unverified.

Needs the debug binaries (CLOUDIMG_BIN_DIR, else $CARGO_TARGET_DIR/debug, else target/debug; the
project's test script builds them first) and RabbitMQ on 127.0.0.1:5672; skipped without them
unless CLOUDIMG_TEST_QUEUE is set (inside scripts/test.sh), where their absence fails.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rules  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.environ.get("CLOUDIMG_CORPUS", os.path.join(os.path.dirname(REPO), "shared", "corpus"))
AMQP_URL = os.environ.get("CLOUDIMG_IAM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
REGION = "us-east-1"


def bin_dir():
    for d in (os.environ.get("CLOUDIMG_BIN_DIR"),
              os.path.join(os.environ["CARGO_TARGET_DIR"], "debug") if os.environ.get("CARGO_TARGET_DIR") else None,
              os.path.join(REPO, "target", "debug")):
        if d and all(os.access(os.path.join(d, b), os.X_OK) for b in ("cloudimg", "cloudimg-producer", "cloudimg-worker")):
            return d
    return None


def broker_up():
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
        return True
    except OSError:
        return False


def missing():
    reasons = []
    if bin_dir() is None:
        reasons.append("no cloudimg, cloudimg-producer, cloudimg-worker binaries")
    if not broker_up():
        reasons.append("no RabbitMQ on 127.0.0.1:5672")
    try:
        import boto3  # noqa: F401
        import pika  # noqa: F401
    except ImportError as e:
        reasons.append(f"python module missing: {e.name}")
    if not os.path.isdir(CORPUS):
        reasons.append(f"no corpus at {CORPUS}")
    return "; ".join(reasons)


MISSING = missing()
REQUIRED = bool(os.environ.get("CLOUDIMG_TEST_QUEUE"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(predicate, what, limit=60.0):
    """Poll a condition (never a timed assertion: the limit only bounds a hang)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- policies from the template

def _resolve(value, bucket):
    """Resolve the intrinsics the S3 statements use, for one bucket name."""
    arn = f"arn:aws:s3:::{bucket}"
    if isinstance(value, dict):
        if set(value) == {"Fn::GetAtt"} and value["Fn::GetAtt"] == ["ImageBucket", "Arn"]:
            return arn
        if set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
            return value["Fn::Sub"].replace("${ImageBucket.Arn}", arn).replace("${ImageBucket}", bucket)
        return {k: _resolve(v, bucket) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, bucket) for v in value]
    return value


def template_s3_statements(role, bucket, path=rules.TEMPLATE_PATH):
    """The role's statements that act on the image bucket, resolved (Fn::If statements, which only
    carry the optional KMS grant, are left out: the test bucket uses SSE-S3)."""
    t = rules.load(path)
    out = []
    for pol in rules.items(rules.props(t["Resources"][role]).get("Policies")):
        for st in pol["PolicyDocument"]["Statement"]:
            if "Fn::If" in st:
                continue
            if "ImageBucket" in json.dumps(st.get("Resource")):
                out.append(_resolve(st, bucket))
    return out


# --------------------------------------------------------------------------- the test

@unittest.skipIf(MISSING and not REQUIRED, MISSING)
class ShellsUnderTemplateIam(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if MISSING:
            raise AssertionError(f"inside the project's test script, but: {MISSING}")
        import boto3

        cls.bins = bin_dir()
        cls.tmp = tempfile.mkdtemp(prefix="cfn-iam-")
        cls.procs = []
        cls.queue = f"{os.environ.get('CLOUDIMG_TEST_QUEUE', 'cfn-iam')}-iam-{uuid.uuid4().hex[:6]}"
        cls.grpc = f"127.0.0.1:{free_port()}"
        port = free_port()
        cls.endpoint = f"http://127.0.0.1:{port}"
        with open(os.path.join(cls.tmp, "moto.log"), "w") as log:
            cls.moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                        stdout=log, stderr=log, start_new_session=True)
        cls.addClassCleanup(cls.stop_everything)
        wait_until(lambda: cls._up(), "the IAM moto server")

        def client(service, key="anything", secret="anything"):
            return boto3.client(service, endpoint_url=cls.endpoint, region_name=REGION,
                                aws_access_key_id=key, aws_secret_access_key=secret)

        cls.client = staticmethod(client)
        cls.bucket = f"cfn-iam-{uuid.uuid4().hex[:10]}"
        client("s3").create_bucket(Bucket=cls.bucket)
        iam = client("iam")
        cls.keys = {}
        before = os.path.join(HERE, "fixtures", "template-before-issue-14.yaml")
        for user, role, path in (("worker", "WorkerRole", rules.TEMPLATE_PATH),
                                 ("producer", "ProducerRole", rules.TEMPLATE_PATH),
                                 ("worker-before-issue-14", "WorkerRole", before), ("checker", None, None)):
            iam.create_user(UserName=user)
            statements = template_s3_statements(role, cls.bucket, path) if role else [
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                 "Resource": [f"arn:aws:s3:::{cls.bucket}", f"arn:aws:s3:::{cls.bucket}/*"]}]
            iam.put_user_policy(UserName=user, PolicyName="from-template",
                                PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}))
            k = iam.create_access_key(UserName=user)["AccessKey"]
            cls.keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
        req = urllib.request.Request(f"{cls.endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).read()
        cls.checker = client("s3", *cls.keys["checker"])

    @classmethod
    def _up(cls):
        try:
            urllib.request.urlopen(f"{cls.endpoint}/moto-api/", timeout=1)
            return True
        except OSError:
            return False

    @classmethod
    def stop_everything(cls):
        for p in cls.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        os.killpg(cls.moto.pid, signal.SIGTERM)
        cls.moto.wait(timeout=30)
        try:
            import pika

            conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            ch = conn.channel()
            for q in (cls.queue, f"{cls.queue}.dead"):
                ch.queue_delete(queue=q)
            conn.close()
        except Exception:  # noqa: BLE001 - best effort on a shared broker
            pass
        shutil.rmtree(cls.tmp, True)

    def env(self, user, **extra):
        key, secret = self.keys[user]
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AMQP_URL": AMQP_URL, "CLOUDIMG_QUEUE": self.queue,
                "BUCKET_NAME": self.bucket, "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION,
                "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "RUST_LOG": "info", **extra}

    def start(self, binary, user, **extra):
        with open(os.path.join(self.tmp, f"{binary}-{len(self.procs)}.log"), "w") as log:
            p = subprocess.Popen([os.path.join(self.bins, binary)], env=self.env(user, **extra), stdout=log, stderr=log)
        self.procs.append(p)
        return p

    def send(self, path, wait):
        args = [os.path.join(self.bins, "cloudimg"), "send", "--json", path]
        if wait:
            args.insert(2, "--wait")
        proc = subprocess.run(args, env={"PATH": os.environ.get("PATH", ""), "CLOUDIMG_PRODUCER": self.grpc},
                              capture_output=True, text=True, timeout=300)
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        return proc, lines

    def exists(self, key):
        from botocore.exceptions import ClientError

        try:
            self.checker.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as e:
            if e.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return False
            raise

    def logs(self):
        out = []
        for name in sorted(os.listdir(self.tmp)):
            with open(os.path.join(self.tmp, name), encoding="utf-8", errors="replace") as f:
                out.append(f"--- {name}\n{f.read()[-3000:]}")
        return "\n".join(out)

    def test_end_to_end_redelivery_staging_and_dead_letters(self):
        producer = self.start("cloudimg-producer", "producer", CLOUDIMG_LISTEN=self.grpc)
        wait_until(lambda: _port_open(self.grpc) or producer.poll() is not None, "the producer to listen")
        self.assertIsNone(producer.poll(), self.logs())

        # 1. Two staged uploads, taken by a consumer that dies without acking (a SIGKILLed
        # worker). The second one's result was written before it died (under the worker's own
        # grants), so its redelivery must find it and write nothing.
        image = os.path.join(CORPUS, "bench", "apple-iphone4s_8mp_city.jpg")
        job_ids = []
        for _ in range(2):
            proc, lines = self.send(image, wait=False)
            self.assertEqual(proc.returncode, 0, proc.stderr + self.logs())
            job_ids.append(lines[0]["job_id"])
            self.checker.head_object(Bucket=self.bucket, Key=f"staging/{job_ids[-1]}")
        job_id, done_id = job_ids
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = conn.channel()
        taken = []
        for _ in range(2):
            method, properties, _ = channel.basic_get(queue=self.queue, auto_ack=False)
            self.assertIsNotNone(method, "the jobs are not in the queue")
            taken.append(properties.headers["x-cloudimg-job-id"])
        self.assertEqual(sorted(taken), sorted(job_ids))
        done_key = f"gray/{done_id}.jpg"
        with open(image, "rb") as f:
            written = f.read()  # any bytes: the worker must not touch them
        self.client("s3", *self.keys["worker"]).put_object(
            Bucket=self.bucket, Key=done_key, Body=written, ContentType="image/jpeg",
            Metadata={"job-id": done_id, "written-by": "the test"})
        before = self.checker.head_object(Bucket=self.bucket, Key=done_key)
        time.sleep(1.1)  # a rewrite would carry a later Last-Modified (whole seconds)
        conn.close()  # no ack: the broker requeues both, marked redelivered

        # 2. The worker gets them redelivered: HeadObject on gray/ first, then the staged path
        # for the first; the second's result exists: acked, staged upload deleted, nothing written.
        metrics = free_port()
        self.start("cloudimg-worker", "worker", CLOUDIMG_METRICS_LISTEN=f"127.0.0.1:{metrics}")
        proc, lines = self.send(image, wait=True)  # a second job, waited for: GetJob through HeadObject
        self.assertEqual(proc.returncode, 0, proc.stderr + self.logs())
        self.assertEqual(lines[-1]["status"], "done", lines)

        wait_until(lambda: self.exists(f"gray/{job_id}.jpg"), "the redelivered job's result")
        wait_until(lambda: not self.exists(f"staging/{job_id}"), "the redelivered job's staged upload to go")
        with open(os.path.join(self.tmp, "moto.log"), encoding="utf-8") as f:
            served = f.read().splitlines()
        head = [i for i, line in enumerate(served) if f'"HEAD /{self.bucket}/gray/{job_id}.jpg ' in line]
        fetch = [i for i, line in enumerate(served) if f'"GET /{self.bucket}/staging/{job_id}?' in line]
        self.assertTrue(head and fetch and head[0] < fetch[0], "the redelivered job was not checked in gray/ first")
        wait_until(lambda: not self.exists(f"staging/{done_id}"), "the finished job's staged upload to go")
        after = self.checker.get_object(Bucket=self.bucket, Key=done_key)
        self.assertEqual(after["Body"].read(), written)
        for field in ("ETag", "LastModified", "Metadata", "ContentLength"):
            self.assertEqual(after[field], before[field], field)
        with open(os.path.join(self.tmp, "moto.log"), encoding="utf-8") as f:
            rewrites = [line for line in f if f'"PUT /{self.bucket}/{done_key}' in line]
        self.assertEqual(len(rewrites), 1, rewrites)  # the test's own write, nothing after it

        def outcome(name):
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("cloudimg_jobs_total{") and f'outcome="{name}"' in line)

        wait_until(lambda: outcome("already_done") + outcome("done") >= 3, "the worker's counts to settle")
        self.assertEqual((outcome("already_done"), outcome("done")), (1.0, 2.0), self.logs())

        # 3. An upload over 16 MiB (a photo padded with comment segments): staged as a multipart
        # upload under the producer's grants, converted, its staged object deleted.
        with open(image, "rb") as f:
            photo = f.read()
        padding = b"".join(b"\xff\xfe\xff\xff" + bytes(65533) for _ in range(300))
        large = os.path.join(self.tmp, "large.jpg")
        with open(large, "wb") as f:
            f.write(photo[:2] + padding + photo[2:])
        self.assertGreater(os.path.getsize(large), 16 << 20)
        proc, lines = self.send(large, wait=True)
        self.assertEqual(proc.returncode, 0, proc.stderr + self.logs())
        self.assertEqual(lines[-1]["status"], "done", lines)
        large_id = lines[-1]["job_id"]
        with open(os.path.join(self.tmp, "moto.log"), encoding="utf-8") as f:
            served = f.read()
        self.assertIn(f"POST /{self.bucket}/staging/{large_id}?uploads", served, "not sent as multipart")
        wait_until(lambda: not self.exists(f"staging/{large_id}"), "the large job's staged upload to go")

        # 4. A JPEG whose header passes the producer and whose data the worker cannot decode:
        # dead-lettered with its failed/ marker, and GetJob reads the marker.
        bad = os.path.join(CORPUS, "bad", "jpeg", "corrupt", "invalid_sos_component_id_16x16.jpg")
        proc, lines = self.send(bad, wait=True)
        self.assertTrue(lines, proc.stderr + self.logs())
        self.assertEqual(lines[-1]["status"], "failed", lines)
        marker = self.checker.get_object(Bucket=self.bucket, Key=f"failed/{lines[-1]['job_id']}.json")
        self.assertIn("kind", json.loads(marker["Body"].read()))
        # No call of the shells was refused along the way (the probes of the other tests use other keys).
        with open(os.path.join(self.tmp, "moto.log"), encoding="utf-8") as f:
            refused = [line for line in f if '" 403 ' in line and "probe" not in line]
        self.assertEqual(refused, [])

    def test_a_missing_grant_fails(self):
        # The enforcement is real: the worker role as issue 14 found it may write gray/ but not HEAD
        # it (the redelivery check), and today's worker role may not stage uploads.
        from botocore.exceptions import ClientError

        before = self.client("s3", *self.keys["worker-before-issue-14"])
        before.put_object(Bucket=self.bucket, Key="gray/probe.jpg", Body=b"x")
        with self.assertRaises(ClientError) as denied:
            before.head_object(Bucket=self.bucket, Key="gray/probe.jpg")
        self.assertEqual(denied.exception.response["ResponseMetadata"]["HTTPStatusCode"], 403)
        now = self.client("s3", *self.keys["worker"])
        now.head_object(Bucket=self.bucket, Key="gray/probe.jpg")
        with self.assertRaises(ClientError) as denied:
            now.put_object(Bucket=self.bucket, Key="staging/probe", Body=b"x")
        self.assertEqual(denied.exception.response["ResponseMetadata"]["HTTPStatusCode"], 403)


def _port_open(addr):
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    unittest.main()
