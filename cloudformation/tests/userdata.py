"""The template's shell scripts, rendered as CloudFormation would, and run inside a throwaway root.

render() performs Fn::Sub the way CloudFormation does for one stack (pseudo parameters, parameters,
resource names and attributes, the Fn::Sub's own variables, `${!x}` to `${x}`), with fixed test
values. scripts() yields every script the instances run: the three bootstraps, the shared
observability setup (an SSM parameter value), and the scripts the bootstraps write with quoted
here-documents (drain watcher, queue-count publishers), so shellcheck sees each as a file.

run() executes a bootstrap with bash in a temporary directory: absolute paths under /etc, /opt,
/usr/local and /var are re-rooted into it (a text substitution of those prefixes in the rendered
script; nothing else is changed), and PATH starts with recording stand-ins for the boundaries the
scripts cross: aws, cfn-signal, systemctl, dnf, docker, curl, useradd, install, sleep, blkid,
mkfs.xfs, mount and the CloudWatch agent's control script (/dev/sdf, the data volume, is re-rooted
too, as an empty file). Each stand-in appends one line per call to calls.log; its
behaviour is chosen by the test through environment variables (see STANDINS).
"""

import os
import re
import subprocess
import textwrap

from rules import props

STACK = "cfn-test"
REGION = "us-east-1"
BUCKET = "cfn-test-imagebucket-0123"
BROKER_SECRET = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:broker-AbCdEf"
TOKEN_SECRET = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:token-AbCdEf"
BROKER_IP = "10.40.10.5"
MQ_HOST = "b-1234.mq.us-east-1.amazonaws.com"

# Values for the names the scripts substitute. Parameters not listed take their defaults.
VALUES = {
    "AWS::StackName": STACK, "AWS::Region": REGION, "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
    "ImageBucket": BUCKET, "BrokerSecret": BROKER_SECRET, "ApiTokenSecret": TOKEN_SECRET,
    "ArtifactBucket": "cloudimg-artifacts-example", "ArtifactPrefix": "cloudimg/v1",
    "ObservabilitySetup": f"AmazonCloudWatch-{STACK}-setup", "AgentConfig": f"AmazonCloudWatch-{STACK}-agent",
    "JournalLogGroup": f"/cloudimg/{STACK}/journal", "PrometheusLogGroup": f"/cloudimg/{STACK}/prometheus",
    "BrokerHost.PrivateIp": BROKER_IP,
}

# Fn::Sub variables of the bootstraps, per broker mode.
LOCALS = {
    "self-hosted": {"AmqpScheme": "amqp", "BrokerAddress": f"{BROKER_IP}:5672", "TokenSecret": TOKEN_SECRET,
                    "MqConsoleHost": ""},
    "amazon-mq": {"AmqpScheme": "amqps", "BrokerAddress": f"{MQ_HOST}:5671", "TokenSecret": TOKEN_SECRET,
                  "MqConsoleHost": MQ_HOST},
}

BOOTSTRAPS = {"producer": "ProducerLaunchTemplate", "worker": "WorkerLaunchTemplate",
              "broker": "BrokerHostLaunchTemplate"}


def _sub_template(value):
    """(template string, local variables) of an Fn::Sub, through Fn::Base64."""
    if isinstance(value, dict) and "Fn::Base64" in value:
        value = value["Fn::Base64"]
    sub = value["Fn::Sub"]
    return (sub[0], sub[1]) if isinstance(sub, list) else (sub, {})


def render(t, value, mode="self-hosted"):
    text, local = _sub_template(value)
    params = {k: str(v.get("Default", "")) for k, v in t.get("Parameters", {}).items()}
    names = dict(params, **VALUES, **{k: LOCALS[mode][k] for k in local})

    def one(m):
        name = m.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name not in names:
            raise KeyError(f"no test value for ${{{name}}}")
        return names[name]

    return re.sub(r"\$\{([^}]+)\}", one, text)


def bootstrap(t, role, mode="self-hosted"):
    lt = t["Resources"][BOOTSTRAPS[role]]
    return render(t, props(lt)["LaunchTemplateData"]["UserData"], mode)


def setup_script(t):
    return render(t, props(t["Resources"]["ObservabilitySetup"])["Value"])


HEREDOC_SCRIPT = re.compile(r"^\s*cat > (/usr/local/sbin/[\w.-]+) <<'EOF'\n(.*?)^\s*EOF\n", re.M | re.S)


def scripts(t):
    """(name, text) of every script an instance runs, in both broker modes."""
    out = []
    for mode in LOCALS:
        for role in BOOTSTRAPS:
            text = bootstrap(t, role, mode)
            out.append((f"{role} bootstrap ({mode})", text))
            for path, body in HEREDOC_SCRIPT.findall(text):
                out.append((f"{path} from the {role} bootstrap ({mode})", textwrap.dedent(body)))
    out.append(("ObservabilitySetup", setup_script(t)))
    return out


# --------------------------------------------------------------------------- running

STANDINS = {
    # The CloudFormation helper: records the exit code it is asked to report.
    "cfn-signal": 'echo "cfn-signal $*" >> "$CALLS"',
    "systemctl": textwrap.dedent("""\
        echo "systemctl $*" >> "$CALLS"
        case "$*" in *"show -p NRestarts"*) echo 0 ;; esac
        """),
    "dnf": 'echo "dnf $*" >> "$CALLS"',
    "useradd": 'echo "useradd $*" >> "$CALLS"',
    "sleep": 'echo "sleep $*" >> "$CALLS"',
    # The data volume: blank on first boot ($VOLUME_FORMATTED set: it already holds the queues).
    "blkid": textwrap.dedent("""\
        echo "blkid $*" >> "$CALLS"
        [ -n "${VOLUME_FORMATTED:-}" ] || exit 2
        case "$*" in *UUID*) echo 0a1b2c3d-0000-4000-8000-000000000000 ;; esac
        """),
    "mkfs.xfs": 'echo "mkfs.xfs $*" >> "$CALLS"',
    "mount": 'echo "mount $*" >> "$CALLS"',
    "amazon-cloudwatch-agent-ctl": 'echo "amazon-cloudwatch-agent-ctl $*" >> "$CALLS"',
    # install: modes and groups are the real system's business; here only the files and folders.
    "install": textwrap.dedent("""\
        echo "install $*" >> "$CALLS"
        dir=no; args=()
        while [ $# -gt 0 ]; do
          case "$1" in -d) dir=yes ;; -m|-g|-o) shift ;; *) args+=("$1") ;; esac
          shift
        done
        if [ "$dir" = yes ]; then mkdir -p "${args[@]}"; else cp "${args[0]}" "${args[1]}"; fi
        """),
    # docker: the broker container answers its health check and lists the queues.
    "docker": textwrap.dedent("""\
        echo "docker $*" >> "$CALLS"
        case "$*" in *list_queues*) printf 'images 7 2\\nimages.dead 1 0\\n' ;; esac
        """),
    # curl: the shells' metrics endpoint says connected after $CONNECT_AFTER polls (never if unset).
    "curl": textwrap.dedent("""\
        echo "curl $*" >> "$CALLS"
        case "$*" in
          *127.0.0.1:9100/metrics*)
            n=$(( $(cat "$STATE/polls" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$STATE/polls"
            if [ -n "${CONNECT_AFTER:-}" ] && [ "$n" -gt "$CONNECT_AFTER" ]; then v=1; else v=0; fi
            printf '# TYPE cloudimg_broker_connected gauge\\ncloudimg_broker_connected %s\\ncloudimg_worker_ready %s\\n' "$v" "$v" ;;
          *api/queues*) echo '{"messages_ready": 7, "messages_unacknowledged": 2}' ;;
          *) exit 22 ;;
        esac
        """),
    # aws: artifacts with a matching checksum file, the secrets, the setup script; $FAIL_AWS
    # (a substring of the arguments) makes that call fail.
    "aws": textwrap.dedent("""\
        echo "aws $*" >> "$CALLS"
        if [ -n "${FAIL_AWS:-}" ] && [[ "$*" == *"$FAIL_AWS"* ]]; then echo "denied" >&2; exit 255; fi
        case "$1 $2" in
          "s3 cp")
            dest="${@: -1}"
            if [[ "$dest" == *SHA256SUMS ]]; then
              sum=$(printf 'fake binary\\n' | sha256sum | cut -d' ' -f1)
              printf '%s  cloudimg-producer\\n%s  cloudimg-worker\\n' "$sum" "$sum" > "$dest"
            else printf 'fake binary\\n' > "$dest"; fi ;;
          "secretsmanager get-secret-value")
            case "$*" in *broker*) echo '{"username": "cloudimg", "password": "pw123"}' ;; *) echo tok456 ;; esac ;;
          "ssm get-parameter") cat "$STATE/setup.sh" ;;
        esac
        """),
}

REROOT = re.compile(r"(?<![\w.$}-])/(etc/|opt/|usr/local/|var/|dev/sdf\b)")


def reroot(text, root):
    return REROOT.sub(lambda m: f"{root}/{m.group(1)}", text)


def run(t, role, workdir, mode="self-hosted", **env):
    """Run a bootstrap in `workdir`; returns (exit code, [calls], root)."""
    root = os.path.join(workdir, "root")
    state = os.path.join(workdir, "state")
    bin_dir = os.path.join(workdir, "bin")
    for d in (root, state, bin_dir, os.path.join(root, "opt/aws/bin"),
              os.path.join(root, "opt/aws/amazon-cloudwatch-agent/bin"),
              os.path.join(root, "opt/aws/amazon-cloudwatch-agent/etc"), os.path.join(root, "usr/local/sbin"),
              os.path.join(root, "etc/systemd/system"), os.path.join(root, "etc/logrotate.d"), os.path.join(root, "dev")):
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(root, "dev/sdf"), "w", encoding="utf-8"):
        pass  # the attached data volume
    for name, body in STANDINS.items():
        where = {"cfn-signal": os.path.join(root, "opt/aws/bin"),
                 "amazon-cloudwatch-agent-ctl": os.path.join(root, "opt/aws/amazon-cloudwatch-agent/bin")}.get(name, bin_dir)
        path = os.path.join(where, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write("#!/bin/bash\nset -u\n" + body)
        os.chmod(path, 0o755)
    with open(os.path.join(state, "setup.sh"), "w", encoding="utf-8") as f:
        f.write(reroot(setup_script(t), root))
    script = os.path.join(workdir, "bootstrap.sh")
    with open(script, "w", encoding="utf-8") as f:
        f.write(reroot(bootstrap(t, role, mode), root))
    calls = os.path.join(workdir, "calls.log")
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": workdir, "CALLS": calls, "STATE": state,
               "LANG": "C.UTF-8", **env}
    proc = subprocess.run(["bash", script], env=environ, cwd=workdir, capture_output=True, text=True, timeout=120)
    with open(calls, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    return proc.returncode, lines, root, proc
