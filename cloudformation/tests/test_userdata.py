"""The instances' scripts pass shellcheck, and the bootstraps, run in a throwaway root with recording
stand-ins (userdata.py), take their steps in order, signal failure, and report healthy only once the
binary says it is connected to the broker."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rules  # noqa: E402
import userdata  # noqa: E402

TEMPLATE = rules.load()
SHELLCHECK = shutil.which("shellcheck")


@unittest.skipIf(SHELLCHECK is None and not os.environ.get("CLOUDIMG_REQUIRE_SHELLCHECK"),
                 "shellcheck not installed (check.sh installs it, and then never skips)")
class Shellcheck(unittest.TestCase):
    def test_every_script_passes(self):
        seen = set()
        for name, text in userdata.scripts(TEMPLATE):
            if text in seen:
                continue
            seen.add(text)
            with self.subTest(script=name):
                proc = subprocess.run([SHELLCHECK, "--shell=bash", "--format=gcc", "-"], input=text,
                                      capture_output=True, text=True)
                self.assertEqual(proc.returncode, 0, proc.stdout)

    def test_shellcheck_catches_a_broken_script(self):
        # The check can fail: an unquoted expansion in the worker bootstrap is reported.
        text = userdata.bootstrap(TEMPLATE, "worker").replace('"$src/SHA256SUMS"', "$src/SHA256SUMS")
        proc = subprocess.run([SHELLCHECK, "--shell=bash", "--format=gcc", "-"], input=text,
                              capture_output=True, text=True)
        self.assertNotEqual(proc.returncode, 0)


class Bootstraps(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="cfn-userdata-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def run_bootstrap(self, role, mode="self-hosted", **env):
        return userdata.run(TEMPLATE, role, self.dir, mode, **env)

    def index(self, calls, prefix):
        hits = [i for i, c in enumerate(calls) if c.startswith(prefix)]
        self.assertTrue(hits, f"no call starting {prefix!r} in {calls}")
        return hits[0]

    def assertInOrder(self, calls, *prefixes):
        positions = [self.index(calls, p) for p in prefixes]
        self.assertEqual(positions, sorted(positions), list(zip(prefixes, positions)))

    def test_worker_steps_in_order(self):
        rc, calls, root, proc = self.run_bootstrap("worker", CONNECT_AFTER="2")
        self.assertEqual(rc, 0, proc.stderr)
        self.assertInOrder(calls, "dnf install -y -q aws-cfn-bootstrap", "aws ssm get-parameter",
                           "dnf install -y -q amazon-cloudwatch-agent", "amazon-cloudwatch-agent-ctl -a fetch-config",
                           "aws s3 cp --only-show-errors s3://cloudimg-artifacts-example/cloudimg/v1/",
                           "aws secretsmanager get-secret-value --secret-id arn:aws:secretsmanager",
                           "systemctl enable --now cloudimg-worker", "curl -sf http://127.0.0.1:9100/metrics",
                           "cfn-signal --exit-code 0 --stack cfn-test --resource WorkerGroup")
        self.assertTrue(calls[-1].startswith("cfn-signal --exit-code 0"), calls[-1])
        with open(os.path.join(root, "etc/cloudimg/worker.env"), encoding="utf-8") as f:
            env = f.read()
        self.assertIn(f"AMQP_URL=amqp://cloudimg:pw123@{userdata.BROKER_IP}:5672/%2f\n", env)
        self.assertIn("CLOUDIMG_QUEUE_TYPE=classic\n", env)

    def test_producer_steps_in_order_with_amazon_mq(self):
        rc, calls, root, proc = self.run_bootstrap("producer", "amazon-mq", CONNECT_AFTER="0")
        self.assertEqual(rc, 0, proc.stderr)
        self.assertInOrder(calls, "dnf install -y -q aws-cfn-bootstrap", "amazon-cloudwatch-agent-ctl",
                           "aws s3 cp", "aws secretsmanager get-secret-value", "systemctl enable --now cloudimg-producer",
                           "systemctl enable --now cloudimg-queue-metric.timer",
                           "curl -sf http://127.0.0.1:9100/metrics", "cfn-signal --exit-code 0")
        with open(os.path.join(root, "etc/cloudimg/producer.env"), encoding="utf-8") as f:
            env = f.read()
        self.assertIn("CLOUDIMG_TLS_TERMINATED=true\n", env)
        self.assertIn("CLOUDIMG_TOKEN=tok456\n", env)
        self.assertIn(f"AMQP_URL=amqps://cloudimg:pw123@{userdata.MQ_HOST}:5671/%2f\n", env)
        with open(os.path.join(root, "etc/cloudimg/broker.netrc"), encoding="utf-8") as f:
            self.assertEqual(f.read(), f"machine {userdata.MQ_HOST} login cloudimg password pw123\n")
        # The publisher it installed reads the management API and publishes both queues' counts.
        publisher = os.path.join(root, "usr/local/sbin/cloudimg-queue-metric")
        environ = {"PATH": f"{self.dir}/bin:/usr/bin:/bin", "CALLS": os.path.join(self.dir, "calls.log"),
                   "STATE": os.path.join(self.dir, "state")}
        self.assertEqual(subprocess.run(["bash", publisher], env=environ, capture_output=True).returncode, 0)
        with open(environ["CALLS"], encoding="utf-8") as f:
            published = [c for c in f.read().splitlines() if "put-metric-data" in c]
        self.assertEqual(len(published), 4, published)
        self.assertIn("--value 7 --dimensions Stack=cfn-test,Queue=images", published[0])
        self.assertIn("Queue=images.dead", published[2])

    def test_broker_host_steps_in_order(self):
        rc, calls, _, proc = self.run_bootstrap("broker")
        self.assertEqual(rc, 0, proc.stderr)
        self.assertInOrder(calls, "dnf install -y -q aws-cfn-bootstrap docker", "amazon-cloudwatch-agent-ctl",
                           "systemctl enable --now docker", "aws secretsmanager get-secret-value", "docker pull",
                           "docker run", "docker exec rabbitmq rabbitmq-diagnostics",
                           "aws cloudwatch put-metric-data", "cfn-signal --exit-code 0 --stack cfn-test --resource BrokerHost")

    def test_broker_data_volume_formatted_once(self):
        rc, calls, root, proc = self.run_bootstrap("broker")
        self.assertEqual(rc, 0, proc.stderr)
        self.assertInOrder(calls, "blkid", "mkfs.xfs -q", "mount", "docker run")
        with open(os.path.join(root, "etc/fstab"), encoding="utf-8") as f:
            self.assertIn("/var/lib/rabbitmq xfs defaults,nofail", f.read())
        shutil.rmtree(self.dir)
        os.makedirs(self.dir)
        rc, calls, _, proc = self.run_bootstrap("broker", VOLUME_FORMATTED="1")  # a replacement host
        self.assertEqual(rc, 0, proc.stderr)
        self.assertFalse([c for c in calls if c.startswith("mkfs")], "an existing volume was formatted")
        self.assertInOrder(calls, "mount", "docker run")

    def test_failing_step_signals_failure(self):
        rc, calls, _, _ = self.run_bootstrap("worker", CONNECT_AFTER="0", FAIL_AWS="/cloudimg-worker ")
        self.assertNotEqual(rc, 0)
        self.assertTrue(calls[-1].startswith("cfn-signal --exit-code 255 "), calls[-1])
        self.assertFalse([c for c in calls if c.startswith("systemctl enable --now cloudimg-worker")])

    def test_unreadable_secret_signals_failure(self):
        rc, calls, _, _ = self.run_bootstrap("producer", CONNECT_AFTER="0", FAIL_AWS="secretsmanager")
        self.assertNotEqual(rc, 0)
        self.assertRegex(calls[-1], r"^cfn-signal --exit-code [1-9]\d* .*--resource ProducerGroup")

    def test_health_check_fails_until_broker_connected(self):
        for role in ("producer", "worker"):
            with self.subTest(role=role):
                shutil.rmtree(self.dir)
                os.makedirs(self.dir)
                rc, calls, _, _ = self.run_bootstrap(role)  # the metric never reports a connection
                self.assertNotEqual(rc, 0)
                self.assertRegex(calls[-1], r"^cfn-signal --exit-code [1-9]")
                polls = [c for c in calls if "127.0.0.1:9100/metrics" in c]
                self.assertEqual(len(polls), 90)  # three minutes of polls, then failure
                self.assertFalse([c for c in calls if c.startswith("systemctl show -p NRestarts")])

    def test_nothing_left_unrooted(self):
        # The run writes only into its directory: no absolute path the scripts write to escapes re-rooting.
        for role in userdata.BOOTSTRAPS:
            text = userdata.reroot(userdata.bootstrap(TEMPLATE, role), "/ROOT")
            for line in text.splitlines():
                if line.strip().startswith("ExecStart=/bin/sh"):
                    continue  # unit-file text, never executed here
                self.assertNotRegex(line, r"(?<![\w.$}-])/(etc/|opt/|usr/local/|var/|dev/sdf\b)", line)


if __name__ == "__main__":
    unittest.main()
