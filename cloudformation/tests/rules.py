"""Rules over cloudformation/template.yaml, checked on the parsed template (structure, not grep).

Each rule takes the template as plain dicts and lists (short-form tags such as !Ref, !Sub, !If already
turned into their long forms) and returns a list of problems; an empty list means the rule holds.
`Fn::If` is expanded into both branches wherever it may appear, so a rule must hold in every broker
mode and architecture, not just the default one. test_rules.py runs every rule on the real template
and proves each one can fail by running it on a mutated copy.

Only the user-data scripts are checked as text: they are opaque strings to CloudFormation.
"""

import copy
import json
import os
import re

import yaml

TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "template.yaml")

NO_VALUE = {"Ref": "AWS::NoValue"}

# Environment variables the binaries read (docs/ARCHITECTURE.md, "Contracts"), plus the two
# switches named in the issue. A unit that sets anything else is a typo the binaries would ignore.
CONTRACT_ENV = {
    "AMQP_URL", "RABBIT_HOST", "CLOUDIMG_QUEUE", "BUCKET_NAME", "CLOUDIMG_OUT_DIR", "AWS_ENDPOINT_URL",
    "AWS_REGION", "CLOUDIMG_LISTEN", "CLOUDIMG_PRODUCER", "CLOUDIMG_MAX_UPLOAD_BYTES", "CLOUDIMG_MAX_PIXELS",
    "CLOUDIMG_STAGE_OVER_BYTES", "CLOUDIMG_CONCURRENCY", "CLOUDIMG_TOKEN", "CLOUDIMG_TLS_CERT",
    "CLOUDIMG_TLS_KEY", "CLOUDIMG_METRICS_LISTEN", "RUST_LOG", "CLOUDIMG_LOG_FORMAT", "CLOUDIMG_TLS_TERMINATED",
    "CLOUDIMG_QUEUE_TYPE", "CLOUDIMG_MEMORY_BUDGET", "CLOUDIMG_JOB_TIMEOUT",
}


# --------------------------------------------------------------------------- loading

def _fallback_loader():
    """A SafeLoader that maps CloudFormation short-form tags to their long forms."""

    class CfnLoader(yaml.SafeLoader):
        pass

    def construct(loader, tag_suffix, node):
        name = "Ref" if tag_suffix == "Ref" else "Condition" if tag_suffix == "Condition" else "Fn::" + tag_suffix
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if tag_suffix == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    CfnLoader.add_multi_constructor("!", construct)
    return CfnLoader


def loads(text):
    """Parse template text. Prefer cfn-lint's own decoder (the one the linter trusts)."""
    try:
        from cfnlint.decode import cfn_yaml

        parsed = cfn_yaml.loads(text)
    except ImportError:  # pragma: no cover - check.sh installs cfn-lint
        parsed = yaml.load(text, Loader=_fallback_loader())  # noqa: S506 - SafeLoader subclass
    # Plain dicts, lists and strings: easy to copy and mutate in the tests.
    return json.loads(json.dumps(parsed))


def load(path=TEMPLATE_PATH):
    with open(path, encoding="utf-8") as f:
        return loads(f.read())


# --------------------------------------------------------------------------- helpers

def resources(t, rtype=None):
    res = t.get("Resources", {})
    return {k: v for k, v in res.items() if rtype is None or v.get("Type") == rtype}


def props(resource):
    return resource.get("Properties", {}) or {}


def branches(value):
    """Every concrete value `value` can take, expanding Fn::If (AWS::NoValue branches dropped)."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _, yes, no = value["Fn::If"]
        return [v for v in branches(yes) + branches(no) if v != NO_VALUE]
    return [value]


def items(value):
    """A list property whose items (or the whole list) may be Fn::If: every item of every branch."""
    out = []
    for whole in branches(value):
        if whole is None:
            continue
        for item in whole if isinstance(whole, list) else [whole]:
            out.extend(branches(item))
    return out


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def ref_name(value):
    if isinstance(value, dict) and "Ref" in value:
        return value["Ref"]
    return None


def is_true(value):
    return value is True or (isinstance(value, str) and value.lower() == "true")


def sub_text(value):
    """The template string of an Fn::Sub (either form), through Fn::Base64; None otherwise."""
    if isinstance(value, dict) and "Fn::Base64" in value:
        value = value["Fn::Base64"]
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub[0] if isinstance(sub, list) else sub
    if isinstance(value, str):
        return value
    return None


def launch_template_of(t, holder_props):
    """The AWS::EC2::LaunchTemplate resource a LaunchTemplate property points to (by !Ref)."""
    spec = holder_props.get("LaunchTemplate")
    if not isinstance(spec, dict):
        return None, None
    name = ref_name(spec.get("LaunchTemplateId")) or ref_name(spec.get("LaunchTemplateName"))
    lt = resources(t, "AWS::EC2::LaunchTemplate").get(name)
    return name, lt


def user_data_text(t, logical_id):
    """User-data script of an instance or ASG: its own, else its launch template's."""
    res = t["Resources"][logical_id]
    p = props(res)
    text = sub_text(p.get("UserData"))
    if text:
        return text
    _, lt = launch_template_of(t, p)
    if lt:
        return sub_text(props(lt).get("LaunchTemplateData", {}).get("UserData"))
    return None


def policy_documents(t):
    """(where, document) for every IAM and bucket policy in the template."""
    docs = []
    for name, res in resources(t).items():
        p = props(res)
        rtype = res.get("Type")
        if rtype == "AWS::IAM::Role":
            for pol in items(p.get("Policies")):
                docs.append((f"{name}.{pol.get('PolicyName')}", pol.get("PolicyDocument", {})))
        elif rtype in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::S3::BucketPolicy"):
            docs.append((name, p.get("PolicyDocument", {})))
    return docs


def statements(document):
    return items(document.get("Statement"))


def _conditions_in(value, found=None):
    found = set() if found is None else found
    if isinstance(value, dict):
        if set(value) == {"Fn::If"}:
            found.add(value["Fn::If"][0])
        for v in value.values():
            _conditions_in(v, found)
    elif isinstance(value, list):
        for v in value:
            _conditions_in(v, found)
    return found


def _resolve(value, assignment):
    if isinstance(value, dict):
        if set(value) == {"Fn::If"}:
            cond, yes, no = value["Fn::If"]
            return _resolve(yes if assignment[cond] else no, assignment)
        return {k: _resolve(v, assignment) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, assignment) for v in value if v != NO_VALUE]
    return value


def scenarios(value):
    """`value` resolved under every assignment of the conditions it uses (Fn::If taken jointly)."""
    conds = sorted(_conditions_in(value))
    out = []
    for mask in range(2 ** len(conds)):
        assignment = {c: bool(mask >> i & 1) for i, c in enumerate(conds)}
        out.append(_resolve(value, assignment))
    return out


def port_branches(rule):
    """(protocol, from, to) of a security-group rule in every condition scenario."""
    return [(str(r.get("IpProtocol")).lower(), r.get("FromPort"), r.get("ToPort")) for r in scenarios(rule)]


def ingress_rules(t):
    """(where, rule) for inline and standalone ingress rules."""
    out = []
    for name, sg in resources(t, "AWS::EC2::SecurityGroup").items():
        for rule in items(props(sg).get("SecurityGroupIngress")):
            out.append((name, rule))
    for name, ing in resources(t, "AWS::EC2::SecurityGroupIngress").items():
        out.append((name, props(ing)))
    return out


def _int_or_ref(value, t):
    """Port as int; a !Ref to a Number parameter resolves to its default."""
    if isinstance(value, dict) and "Ref" in value:
        par = t.get("Parameters", {}).get(value["Ref"], {})
        value = par.get("Default")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- S3 rules

def rule_bucket_versioning(t):
    problems = []
    buckets = resources(t, "AWS::S3::Bucket")
    if not buckets:
        problems.append("no S3 bucket in the template")
    for name, b in buckets.items():
        status = props(b).get("VersioningConfiguration", {}).get("Status")
        if status != "Enabled":
            problems.append(f"{name}: versioning is {status!r}, expected 'Enabled'")
    return problems


def rule_bucket_encryption(t):
    problems = []
    for name, b in resources(t, "AWS::S3::Bucket").items():
        conf = props(b).get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration")
        rules = items(conf)
        if not rules:
            problems.append(f"{name}: no default encryption")
        for rule in rules:
            defaults = branches(rule.get("ServerSideEncryptionByDefault"))
            if not defaults:
                problems.append(f"{name}: encryption rule without ServerSideEncryptionByDefault")
            for d in defaults:
                alg = d.get("SSEAlgorithm") if isinstance(d, dict) else None
                if alg not in ("AES256", "aws:kms", "aws:kms:dsse"):
                    problems.append(f"{name}: SSEAlgorithm {alg!r}")
                if alg in ("aws:kms", "aws:kms:dsse") and not d.get("KMSMasterKeyID"):
                    problems.append(f"{name}: SSE-KMS without KMSMasterKeyID")
    return problems


def rule_public_access_block(t):
    problems = []
    for name, b in resources(t, "AWS::S3::Bucket").items():
        pab = props(b).get("PublicAccessBlockConfiguration", {})
        for key in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
            if not is_true(pab.get(key)):
                problems.append(f"{name}: {key} is not true")
    return problems


def rule_bucket_ownership(t):
    problems = []
    for name, b in resources(t, "AWS::S3::Bucket").items():
        rules = props(b).get("OwnershipControls", {}).get("Rules", [])
        if not any(r.get("ObjectOwnership") == "BucketOwnerEnforced" for r in rules):
            problems.append(f"{name}: ObjectOwnership is not BucketOwnerEnforced (ACLs still apply)")
    return problems


def _mentions(value, logical_id):
    return logical_id in json.dumps(value)


def rule_tls_only_bucket_policy(t):
    problems = []
    policies = resources(t, "AWS::S3::BucketPolicy")
    for name in resources(t, "AWS::S3::Bucket"):
        found = False
        for pol in policies.values():
            p = props(pol)
            if ref_name(p.get("Bucket")) != name:
                continue
            for st in statements(p.get("PolicyDocument", {})):
                cond = st.get("Condition", {}).get("Bool", {})
                res = as_list(st.get("Resource"))
                covers_objects = any(_mentions(r, name) and "/*" in json.dumps(r) for r in res)
                covers_bucket = any(r == {"Fn::GetAtt": [name, "Arn"]} for r in res)
                if (st.get("Effect") == "Deny" and str(cond.get("aws:SecureTransport")).lower() == "false"
                        and covers_objects and covers_bucket and st.get("Principal") in ("*", {"AWS": "*"})):
                    found = True
        if not found:
            problems.append(f"{name}: no bucket policy denying requests without TLS (aws:SecureTransport false)")
    return problems


def rule_bucket_lifecycle(t):
    problems = []
    for name, b in resources(t, "AWS::S3::Bucket").items():
        rules = [r for r in props(b).get("LifecycleConfiguration", {}).get("Rules", []) if r.get("Status") == "Enabled"]
        # Noncurrent versions and multipart uploads are cleaned bucket-wide, not under one prefix.
        whole = [r for r in rules if not r.get("Prefix") and not r.get("Filter") and not r.get("TagFilters")]
        if not any("NoncurrentVersionExpiration" in r or "NoncurrentVersionExpirationInDays" in r for r in whole):
            problems.append(f"{name}: no bucket-wide rule expiring noncurrent versions")
        if not any("AbortIncompleteMultipartUpload" in r for r in whole):
            problems.append(f"{name}: no bucket-wide rule aborting incomplete multipart uploads")
        staged = [r for r in rules
                  if (r.get("Prefix") or r.get("Filter", {}).get("Prefix")) == "staging/"
                  and ("ExpirationInDays" in r or "ExpirationDate" in r)]
        if not staged:
            problems.append(f"{name}: no rule expiring staged uploads under staging/")
    return problems


# --------------------------------------------------------------------------- IAM rules

def _is_s3_action(action):
    a = str(action).lower()
    return a == "*" or a.startswith("s3:") or a.startswith("s3*")


def rule_no_s3_wildcards(t):
    """No Allow grants s3:* (or '*'), no S3 action with a wildcard, no S3 action on Resource '*'.

    Deny statements are exempt: the TLS-only bucket policy must deny s3:* to cover every action.
    """
    problems = []
    for where, doc in policy_documents(t):
        for st in statements(doc):
            if st.get("Effect") != "Allow":
                continue
            if "NotAction" in st or "NotResource" in st:
                problems.append(f"{where}: Allow with NotAction/NotResource")
                continue
            actions = [a for a in items(st.get("Action"))]
            s3_actions = [a for a in actions if _is_s3_action(a)]
            for a in s3_actions:
                if "*" in str(a):
                    problems.append(f"{where}: Allow of wildcard action {a!r}")
            if s3_actions:
                for r in items(st.get("Resource")):
                    text = r if isinstance(r, str) else json.dumps(r)
                    if r == "*" or re.search(r"arn:[^\"]*:s3:::\*", text):
                        problems.append(f"{where}: S3 actions {s3_actions} on resource {text}")
    return problems


def _roles_assumed_by_ec2(t):
    out = {}
    for name, role in resources(t, "AWS::IAM::Role").items():
        doc = props(role).get("AssumeRolePolicyDocument", {})
        for st in statements(doc):
            services = as_list(st.get("Principal", {}).get("Service"))
            if "ec2.amazonaws.com" in services:
                out[name] = role
    return out


def rule_session_manager_not_ssh(t):
    """Every EC2 role carries AmazonSSMManagedInstanceCore; nothing sets an SSH key pair."""
    problems = []
    roles = _roles_assumed_by_ec2(t)
    if not roles:
        problems.append("no instance role")
    for name, role in roles.items():
        arns = json.dumps(props(role).get("ManagedPolicyArns", []))
        if "policy/AmazonSSMManagedInstanceCore" not in arns:
            problems.append(f"{name}: AmazonSSMManagedInstanceCore is not attached")
    for name, res in resources(t).items():
        p = props(res)
        if "KeyName" in p or "KeyName" in p.get("LaunchTemplateData", {}):
            problems.append(f"{name}: sets an SSH KeyName")
    return problems


# --------------------------------------------------------------------------- network rules

def rule_no_port_22(t):
    problems = []
    for where, rule in ingress_rules(t):
        for proto, lo, hi in port_branches(rule):
            if proto in ("-1", "all"):
                problems.append(f"{where}: ingress of all protocols (includes port 22)")
                continue
            lo_i, hi_i = _int_or_ref(lo, t), _int_or_ref(hi, t)
            if lo_i is None or hi_i is None:
                problems.append(f"{where}: ingress port range not checkable ({lo!r}-{hi!r})")
            elif lo_i <= 22 <= hi_i:
                problems.append(f"{where}: ingress {proto} {lo_i}-{hi_i} includes SSH port 22")
    return problems


def rule_ingress_scope(t):
    """Ingress: the listener port from the client CIDR parameter (the load balancer's group only), the
    gRPC port from the load balancer's group, or the broker port from our own groups."""
    problems = []
    our_groups = set(resources(t, "AWS::EC2::SecurityGroup"))
    params = t.get("Parameters", {})
    for where, rule in ingress_rules(t):
        cidr = rule.get("CidrIp")
        src = ref_name(rule.get("SourceSecurityGroupId"))
        if rule.get("CidrIpv6") or rule.get("SourcePrefixListId"):
            problems.append(f"{where}: ingress from an IPv6 range or prefix list")
        elif cidr is not None:
            pname = ref_name(cidr)
            if pname is None or pname not in params:
                problems.append(f"{where}: ingress from literal CIDR {cidr!r} instead of a parameter")
            elif params[pname].get("Default") in ("0.0.0.0/0",):
                problems.append(f"{where}: CIDR parameter {pname} defaults to the whole internet")
            if where != "LoadBalancerSecurityGroup":
                problems.append(f"{where}: CIDR ingress outside the load balancer's group")
            for _, lo, hi in port_branches(rule):
                if lo != hi or ref_name(lo) != "ListenerPort":
                    problems.append(f"{where}: CIDR ingress on ports {lo!r}-{hi!r}, expected the listener port only")
        elif src is not None:
            if src not in our_groups:
                problems.append(f"{where}: ingress from foreign group {src}")
            for _, lo, hi in port_branches(rule):
                grpc_from_lb = src == "LoadBalancerSecurityGroup" and lo == hi and ref_name(lo) == "GrpcPort"
                target = ref_name(rule.get("GroupId")) or where
                mq_api = target == "BrokerSecurityGroup" and src == "ProducerSecurityGroup" and lo == hi == 443
                if not grpc_from_lb and not mq_api and (lo != hi or _int_or_ref(lo, t) not in (5671, 5672)):
                    problems.append(f"{where}: group ingress on {lo!r}-{hi!r}, expected the broker port "
                                    f"(or gRPC from the load balancer)")
        else:
            problems.append(f"{where}: ingress rule without a source")
    return problems


# --------------------------------------------------------------------------- compute rules

def _imds_required(lt):
    data = props(lt).get("LaunchTemplateData", {})
    tokens = branches(data.get("MetadataOptions", {}).get("HttpTokens"))
    return bool(tokens) and all(v == "required" for v in tokens)


def rule_imdsv2_required(t):
    problems = []
    lts = resources(t, "AWS::EC2::LaunchTemplate")
    for name, lt in lts.items():
        if not _imds_required(lt):
            problems.append(f"{name}: MetadataOptions.HttpTokens is not 'required'")
    for name, inst in resources(t, "AWS::EC2::Instance").items():
        lt_name, lt = launch_template_of(t, props(inst))
        if lt is None or not _imds_required(lt):
            problems.append(f"{name}: instance without an IMDSv2-only launch template")
    for name, asg in resources(t, "AWS::AutoScaling::AutoScalingGroup").items():
        p = props(asg)
        if "LaunchConfigurationName" in p:
            problems.append(f"{name}: uses a launch configuration")
        spec_holder = p
        if "MixedInstancesPolicy" in p:
            spec_holder = {"LaunchTemplate": p["MixedInstancesPolicy"].get("LaunchTemplate", {}).get(
                "LaunchTemplateSpecification")}
        _, lt = launch_template_of(t, spec_holder)
        if lt is None or not _imds_required(lt):
            problems.append(f"{name}: group without an IMDSv2-only launch template")
    for name in resources(t, "AWS::AutoScaling::LaunchConfiguration"):
        problems.append(f"{name}: launch configurations are deprecated; use a launch template")
    return problems


def rule_ami_from_public_ssm(t):
    problems = []
    params = t.get("Parameters", {})
    wanted = {
        "x86_64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
        "arm64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
    }
    ami_params = {}
    for pname, par in params.items():
        if par.get("Type") == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>":
            for arch, path in wanted.items():
                if par.get("Default") == path:
                    ami_params[arch] = pname
    for arch in wanted:
        if arch not in ami_params:
            problems.append(f"no AMI parameter defaulting to the AL2023 {arch} public SSM parameter")
    arch_values = params.get("Architecture", {}).get("AllowedValues", [])
    if sorted(arch_values) != ["arm64", "x86_64"]:
        problems.append(f"Architecture parameter allows {arch_values}, expected x86_64 and arm64")
    holders = []
    for name, inst in resources(t, "AWS::EC2::Instance").items():
        holders.append((name, props(inst).get("ImageId")))
    for name, lt in resources(t, "AWS::EC2::LaunchTemplate").items():
        data = props(lt).get("LaunchTemplateData", {})
        if "ImageId" in data:
            holders.append((name, data["ImageId"]))
    for name, image in holders:
        refs = {ref_name(b) for b in branches(image)}
        if name == "BrokerHost":  # may be pinned: its data must survive an AL2023 release (docs/aws.md)
            refs.discard("BrokerImageId")
        if refs != set(ami_params.values()):
            problems.append(f"{name}: ImageId {image!r} does not choose between the AL2023 SSM parameters by architecture")
    return problems


def rule_scaling_policy(t):
    """Target tracking on ready messages per in-service worker, in both broker modes."""
    problems = []
    groups = resources(t, "AWS::AutoScaling::AutoScalingGroup")
    policies = [(n, p) for n, p in resources(t, "AWS::AutoScaling::ScalingPolicy").items()
                if props(p).get("PolicyType") == "TargetTrackingScaling"]
    if not policies:
        return ["no target-tracking scaling policy"]
    for name, pol in policies:
        p = props(pol)
        group = ref_name(p.get("AutoScalingGroupName"))
        if group not in groups:
            problems.append(f"{name}: does not scale a group of this template")
            continue
        collected = [m for mc in props(groups[group]).get("MetricsCollection", []) for m in mc.get("Metrics", [])]
        if "GroupInServiceInstances" not in collected:
            problems.append(f"{group}: MetricsCollection lacks GroupInServiceInstances, so the policy has no denominator")
        metrics = p.get("TargetTrackingConfiguration", {}).get("CustomizedMetricSpecification", {}).get("Metrics", [])
        ready_ids, inservice_ids = set(), set()
        for m in metrics:
            stat = m.get("MetricStat", {}).get("Metric", {})
            if stat.get("MetricName") == "MessageReadyCount":
                namespaces = branches(stat.get("Namespace"))
                if namespaces != [BACKLOG_NAMESPACE]:
                    problems.append(f"{name}: MessageReadyCount must come from the {BACKLOG_NAMESPACE} namespace the "
                                    f"stack publishes in every broker mode, not {namespaces}")
                for dims in branches(stat.get("Dimensions")):
                    if "Queue" not in {d.get("Name") for d in dims}:
                        problems.append(f"{name}: MessageReadyCount without a Queue dimension (broker-wide, not per queue)")
                ready_ids.add(m.get("Id"))
            if (stat.get("MetricName") == "GroupInServiceInstances" and stat.get("Namespace") == "AWS/AutoScaling"
                    and any(ref_name(d.get("Value")) == group for d in stat.get("Dimensions", []))):
                inservice_ids.add(m.get("Id"))
        returned = [m for m in metrics if m.get("ReturnData") is not False]
        if not ready_ids:
            problems.append(f"{name}: no per-queue MessageReadyCount metric")
        if not inservice_ids:
            problems.append(f"{name}: no GroupInServiceInstances metric for {group}")
        if len(returned) != 1 or "Expression" not in returned[0]:
            problems.append(f"{name}: exactly one returned metric must be the backlog-per-instance expression")
        else:
            expr = returned[0]["Expression"].replace(" ", "")
            if not any(f"{r}/{i}" in expr for r in ready_ids for i in inservice_ids):
                problems.append(f"{name}: expression {returned[0]['Expression']!r} is not ready / in-service")
    for g in {ref_name(props(pol).get("AutoScalingGroupName")) for _, pol in policies} & set(groups):
        p = props(groups[g])
        for key, par in (("MinSize", "WorkerMinSize"), ("MaxSize", "WorkerMaxSize")):
            if ref_name(p.get(key)) != par:
                problems.append(f"{g}: {key} is not the {par} parameter")
        if not any(ref_name(b) == "WorkerDesiredCapacity" for b in branches(p.get("DesiredCapacity"))):
            problems.append(f"{g}: DesiredCapacity is not the WorkerDesiredCapacity parameter")
    return problems


def rule_signals_and_rollback(t):
    """Every instance and group waits for cfn-signal from its own bootstrap."""
    problems = []
    holders = list(resources(t, "AWS::EC2::Instance").items()) + \
        list(resources(t, "AWS::AutoScaling::AutoScalingGroup").items())
    for name, res in holders:
        sig = res.get("CreationPolicy", {}).get("ResourceSignal", {})
        if not sig.get("Timeout") or "Count" not in sig:
            problems.append(f"{name}: no CreationPolicy.ResourceSignal with Count and Timeout")
        text = user_data_text(t, name) or ""
        if "cfn-signal" not in text or f"--resource {name}" not in text:
            problems.append(f"{name}: user data does not cfn-signal this resource")
        elif not re.search(r"^trap\s+'[^']*'\s+EXIT", text, re.M) or not re.search(r"^set -[a-z]*e", text, re.M):
            problems.append(f"{name}: user data does not signal failures (set -e and a trap)")
    for name, asg in resources(t, "AWS::AutoScaling::AutoScalingGroup").items():
        upd = asg.get("UpdatePolicy", {})
        rolling = upd.get("AutoScalingRollingUpdate", {})
        if not (is_true(rolling.get("WaitOnResourceSignals")) or upd.get("AutoScalingReplacingUpdate")):
            problems.append(f"{name}: updates do not wait for signals from new instances")
    return problems


ENV_LINE = re.compile(r"(?:^\s*|echo\s+'|printf\s+'|\\n)([A-Z][A-Z0-9_]*)=", re.M)


def _unit_env(text):
    return set(ENV_LINE.findall(text or ""))


def rule_service_units(t):
    """Producer and worker units: contract env names only, systemd drain and restart settings."""
    problems = []
    wanted = {
        "ProducerGroup": ("cloudimg-producer", {"AMQP_URL", "CLOUDIMG_QUEUE", "CLOUDIMG_QUEUE_TYPE", "BUCKET_NAME",
                                                "AWS_REGION", "CLOUDIMG_LISTEN", "CLOUDIMG_METRICS_LISTEN", "RUST_LOG",
                                                "CLOUDIMG_LOG_FORMAT", "CLOUDIMG_TOKEN", "CLOUDIMG_TLS_TERMINATED"}),
        "WorkerGroup": ("cloudimg-worker", {"AMQP_URL", "CLOUDIMG_QUEUE", "CLOUDIMG_QUEUE_TYPE", "BUCKET_NAME", "AWS_REGION",
                                            "CLOUDIMG_METRICS_LISTEN", "RUST_LOG", "CLOUDIMG_LOG_FORMAT",
                                            "CLOUDIMG_CONCURRENCY"}),
    }
    shell_vars = {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"}
    for name, (binary, env) in wanted.items():
        if name not in t.get("Resources", {}):
            problems.append(f"{name}: missing")
            continue
        text = user_data_text(t, name) or ""
        found = _unit_env(text)
        for var in sorted(env - found):
            problems.append(f"{name}: does not set {var}")
        for var in sorted(found - CONTRACT_ENV - shell_vars):
            problems.append(f"{name}: sets {var}, which no binary reads")
        for directive in ("Restart=always", "KillSignal=SIGTERM", "TimeoutStopSec=",
                          f"EnvironmentFile=/etc/cloudimg/", f"ExecStart=/opt/cloudimg/bin/{binary}",
                          "User=cloudimg", "CLOUDIMG_LOG_FORMAT=json"):
            if directive not in text:
                problems.append(f"{name}: unit lacks {directive}")
        if re.search(r"^\s*set\s+-[a-z]*x", text, re.M) or "bash -x" in text:
            problems.append(f"{name}: user data traces commands (would print secrets)")
        if "get-secret-value" not in text or "install -m 0600 /dev/null /etc/cloudimg/" not in text:
            problems.append(f"{name}: broker credentials are not fetched into a root-only file")
        if "amqps" not in json.dumps(t["Resources"]):
            problems.append("no amqps:// URL for Amazon MQ")
    return problems


# --------------------------------------------------------------------------- broker rules

def rule_amazon_mq(t):
    problems = []
    conds = t.get("Conditions", {})
    brokers = resources(t, "AWS::AmazonMQ::Broker")
    if not brokers:
        return ["no Amazon MQ broker"]
    for name, b in brokers.items():
        p = props(b)
        if p.get("EngineType", "").upper() != "RABBITMQ":
            problems.append(f"{name}: engine is not RabbitMQ")
        if p.get("PubliclyAccessible") not in (False, "false"):
            problems.append(f"{name}: publicly accessible")
        if b.get("Condition") not in conds:
            problems.append(f"{name}: not conditional on the broker-mode parameter")
        mode_param = t.get("Parameters", {}).get(ref_name(p.get("DeploymentMode")), {})
        if sorted(mode_param.get("AllowedValues", [])) != ["CLUSTER_MULTI_AZ", "SINGLE_INSTANCE"]:
            problems.append(f"{name}: DeploymentMode is not a SINGLE_INSTANCE/CLUSTER_MULTI_AZ parameter")
        for user in items(p.get("Users")):
            pw = sub_text(user.get("Password")) or ""
            if not pw.startswith("{{resolve:secretsmanager:"):
                problems.append(f"{name}: password is not a Secrets Manager dynamic reference")
        for sg in items(p.get("SecurityGroups")):
            group = resources(t, "AWS::EC2::SecurityGroup").get(ref_name(sg))
            if group is None:
                problems.append(f"{name}: security group {sg!r} is not ours")
                continue
            ports = {lo for rule in items(props(group).get("SecurityGroupIngress"))
                     for _, lo, _hi in port_branches(rule)}
            if 5671 not in {_int_or_ref(x, t) for x in ports}:
                problems.append(f"{name}: its security group does not open AMQPS 5671")
    mode = t.get("Parameters", {}).get("BrokerMode", {}).get("AllowedValues", [])
    if "self-hosted" not in mode or "amazon-mq" not in mode:
        problems.append(f"BrokerMode allows {mode}, expected amazon-mq and self-hosted")
    return problems


BACKLOG_NAMESPACE = "cloudimg"
BACKLOG_METRICS = ("MessageReadyCount", "MessageUnacknowledgedCount")


def _backlog_dimensions(t):
    """Dimension names the scaling policy reads the ready count with."""
    for pol in resources(t, "AWS::AutoScaling::ScalingPolicy").values():
        for m in props(pol).get("TargetTrackingConfiguration", {}).get("CustomizedMetricSpecification", {}).get("Metrics", []):
            metric = m.get("MetricStat", {}).get("Metric", {})
            if metric.get("MetricName") == "MessageReadyCount":
                return sorted({d.get("Name") for d in items(metric.get("Dimensions"))})
    return None


def rule_backlog_published(t):
    """In each broker mode a bootstrap that always runs publishes the work queue's own counts (every
    minute, with the dimensions the policy reads), and its role may publish to that namespace only."""
    problems = []
    dims = _backlog_dimensions(t)
    if dims is None:
        return ["scaling policy reads no MessageReadyCount"]
    publishers = {"self-hosted": "BrokerHost", "amazon-mq": "ProducerGroup"}
    for mode, who in publishers.items():
        if who not in t.get("Resources", {}):
            problems.append(f"{mode}: {who} missing")
            continue
        text = user_data_text(t, who) or ""
        for metric in BACKLOG_METRICS:
            if not re.search(rf"put-metric-data[^\n]*--namespace {BACKLOG_NAMESPACE}[^\n]*\n[^\n]*--metric-name {metric}",
                             text):
                problems.append(f"{mode}: {who} does not publish {metric} to namespace {BACKLOG_NAMESPACE}")
        m = re.search(r'dims="([^"]+)"', text)
        published = sorted(kv.split("=", 1)[0] for kv in m.group(1).split(",")) if m else []
        if published != dims:
            problems.append(f"{mode}: {who} publishes dimensions {published}, the policy reads {dims}")
        if "timer" not in text or "OnUnitActiveSec=60" not in text:
            problems.append(f"{mode}: {who} does not publish every minute")
        if "messages_ready" not in text or "messages_unacknowledged" not in text:
            problems.append(f"{mode}: {who} does not read the queue's own ready and unacknowledged counts")
    allowed = False
    for where, doc in policy_documents(t):
        for st in statements(doc):
            if "cloudwatch:PutMetricData" in as_list(st.get("Action")) and st.get("Effect") == "Allow":
                if st.get("Condition", {}).get("StringEquals", {}).get("cloudwatch:namespace") == BACKLOG_NAMESPACE:
                    allowed = True
                else:
                    problems.append(f"{where}: PutMetricData not confined to namespace {BACKLOG_NAMESPACE}")
    if not allowed:
        problems.append("no role may publish the backlog metric")
    return problems


def _alarm_for(t, policy):
    for name, alarm in resources(t, "AWS::CloudWatch::Alarm").items():
        if policy in {ref_name(a) for a in items(props(alarm).get("AlarmActions"))}:
            return name, props(alarm)
    return None, {}


def _returned_expression(alarm):
    returned = [m for m in alarm.get("Metrics", []) if m.get("ReturnData") is not False]
    return returned[0].get("Expression", "") if len(returned) == 1 else ""


def _ids_of(alarm, namespace, metric_name):
    return {m.get("Id") for m in alarm.get("Metrics", [])
            if m.get("MetricStat", {}).get("Metric", {}).get("MetricName") == metric_name
            and m.get("MetricStat", {}).get("Metric", {}).get("Namespace") == namespace}


def rule_scale_to_zero_and_back(t):
    """WorkerMinSize may be 0; an idle alarm sets the group to 0, and scale-out from zero watches the raw
    ready count while nothing is in service, never dividing by in-service instances."""
    problems = []
    if int(t.get("Parameters", {}).get("WorkerMinSize", {}).get("MinValue", 1)) != 0:
        problems.append("WorkerMinSize cannot be 0")
    steps = {n: props(p) for n, p in resources(t, "AWS::AutoScaling::ScalingPolicy").items()
             if props(p).get("PolicyType") == "StepScaling" and props(p).get("AdjustmentType") == "ExactCapacity"}
    to_zero = [n for n, p in steps.items() if [s.get("ScalingAdjustment") for s in p.get("StepAdjustments", [])] == [0]]
    from_zero = [n for n, p in steps.items() if any(int(s.get("ScalingAdjustment", 0)) >= 1
                                                    for s in p.get("StepAdjustments", []))]
    if not to_zero:
        problems.append("no policy sets the workers to zero")
    for policy in to_zero:
        name, alarm = _alarm_for(t, policy)
        if not name:
            problems.append(f"{policy}: no alarm triggers it")
            continue
        if ref_name(alarm.get("EvaluationPeriods")) != "WorkerIdleMinutes":
            problems.append(f"{name}: idle time is not the WorkerIdleMinutes parameter")
        if alarm.get("TreatMissingData") not in ("notBreaching", "missing"):
            problems.append(f"{name}: missing data would count as an idle queue")
        expr = _returned_expression(alarm).replace(" ", "")
        ready = _ids_of(alarm, BACKLOG_NAMESPACE, "MessageReadyCount")
        unacked = _ids_of(alarm, BACKLOG_NAMESPACE, "MessageUnacknowledgedCount")
        if not any(f"{r}+{u}" in expr or f"{u}+{r}" in expr for r in ready for u in unacked):
            problems.append(f"{name}: idle is not 'nothing ready and nothing unacknowledged' ({expr!r})")
    if not from_zero:
        problems.append("no policy brings the workers back from zero")
    for policy in from_zero:
        name, alarm = _alarm_for(t, policy)
        if not name:
            problems.append(f"{policy}: no alarm triggers it")
            continue
        expr = _returned_expression(alarm).replace(" ", "")
        ready = _ids_of(alarm, BACKLOG_NAMESPACE, "MessageReadyCount")
        inservice = _ids_of(alarm, "AWS/AutoScaling", "GroupInServiceInstances")
        if not ready or not any(r in expr for r in ready):
            problems.append(f"{name}: scale-out from zero does not read the raw ready count")
        if any(re.search(rf"/\s*(FILL\()?{i}\b", expr) for i in inservice) or "/" in expr:
            problems.append(f"{name}: scale-out from zero divides by in-service instances ({expr!r}); "
                            f"at zero that has no value and the alarm never fires")
    return problems


# --------------------------------------------------------------------------- template hygiene

def rule_outputs(t):
    outputs = t.get("Outputs", {})
    return [f"missing output {o}" for o in ("ProducerEndpoint", "BucketName", "BrokerEndpoint", "QueueName")
            if o not in outputs]


STATEFUL = ("AWS::S3::Bucket", "AWS::AmazonMQ::Broker", "AWS::SecretsManager::Secret")


def rule_deletion_policies(t):
    """Stateful resources state both policies; the results bucket is retained."""
    problems = []
    for name, res in resources(t).items():
        if res.get("Type") in STATEFUL:
            for key in ("DeletionPolicy", "UpdateReplacePolicy"):
                if key not in res:
                    problems.append(f"{name}: no explicit {key}")
        if res.get("Type") == "AWS::S3::Bucket":
            if res.get("DeletionPolicy") != "Retain" or res.get("UpdateReplacePolicy") != "Retain":
                problems.append(f"{name}: the results bucket must be retained on delete and replace")
    return problems


def rule_parameters_constrained(t):
    problems = []
    for name, par in t.get("Parameters", {}).items():
        ptype = par.get("Type", "")
        if ptype.startswith("AWS::"):
            continue
        if ptype == "String" and not ("AllowedValues" in par or "AllowedPattern" in par):
            problems.append(f"parameter {name}: unconstrained string")
        if ptype == "Number" and not ("MinValue" in par and "MaxValue" in par) and "AllowedValues" not in par:
            problems.append(f"parameter {name}: number without MinValue and MaxValue")
    return problems


def rule_private_placement(t):
    """Workers and the broker live in private subnets; no subnet hands out public IPs."""
    problems = []
    subnets = resources(t, "AWS::EC2::Subnet")
    public = {n for n in subnets if n.startswith("Public")}
    private = {n for n in subnets if n.startswith("Private")}
    if len(private) < 2 or len(public) < 2:
        problems.append("expected two public and two private subnets")
    for name, sn in subnets.items():
        if is_true(props(sn).get("MapPublicIpOnLaunch")):
            problems.append(f"{name}: MapPublicIpOnLaunch is true")
    azs = {json.dumps(props(subnets[n]).get("AvailabilityZone")) for n in private}
    if len(azs) < 2:
        problems.append("private subnets are not in two availability zones")
    for name, asg in resources(t, "AWS::AutoScaling::AutoScalingGroup").items():
        zones = {ref_name(z) for z in items(props(asg).get("VPCZoneIdentifier"))}
        if not zones or not zones <= private or len(zones) < 2:
            problems.append(f"{name}: not spread over the private subnets")
    for name, b in resources(t, "AWS::AmazonMQ::Broker").items():
        zones = {ref_name(z) for z in items(props(b).get("SubnetIds"))}
        if not zones or not zones <= private:
            problems.append(f"{name}: not in private subnets")
    for name, inst in resources(t, "AWS::EC2::Instance").items():
        if ref_name(props(inst).get("SubnetId")) not in private:
            problems.append(f"{name}: not in a private subnet")
    return problems


# --------------------------------------------------------------------------- issue 14: boot, IAM, front door

def _role_allows(t, role, action, resource_suffix):
    """Does an Allow statement of `role` grant `action` on a resource ending in `resource_suffix`?"""
    for pol in items(props(t["Resources"].get(role, {})).get("Policies")):
        for st in statements(pol.get("PolicyDocument", {})):
            if st.get("Effect") != "Allow" or action not in items(st.get("Action")):
                continue
            if any((sub_text(r) or "").endswith(resource_suffix) for r in items(st.get("Resource"))):
                return True
    return False


# What the shells ask of S3 (shells/worker/src/job.rs, shells/producer/src/service.rs), in AWS's
# action names: HEAD is authorised as s3:GetObject.
S3_NEEDS = {
    "WorkerRole": [("s3:GetObject", "/staging/*", "fetch a staged upload"),
                   ("s3:DeleteObject", "/staging/*", "delete the staged upload after the result"),
                   ("s3:GetObject", "/gray/*", "HeadObject on gray/<id> on redelivery"),
                   ("s3:PutObject", "/gray/*", "write the result"),
                   ("s3:PutObject", "/failed/*", "write the failure marker")],
    "ProducerRole": [("s3:PutObject", "/staging/*", "stage a large upload"),
                     ("s3:DeleteObject", "/staging/*", "delete a staged upload whose publish failed"),
                     ("s3:GetObject", "/staging/*", "HeadObject on a multipart upload whose completion reply is unreadable"),
                     ("s3:GetObject", "/gray/*", "GetJob: HeadObject on the result"),
                     ("s3:GetObject", "/failed/*", "GetJob: read the failure marker")],
}


def rule_iam_matches_shells(t):
    """Each role grants what its shell calls, and ListBucket only with an s3:prefix condition."""
    problems = []
    for role, needs in S3_NEEDS.items():
        for action, suffix, why in needs:
            if not _role_allows(t, role, action, suffix):
                problems.append(f"{role}: lacks {action} on *{suffix} ({why})")
        for pol in items(props(t["Resources"].get(role, {})).get("Policies")):
            for st in statements(pol.get("PolicyDocument", {})):
                if "s3:ListBucket" in items(st.get("Action")):
                    cond = json.dumps(st.get("Condition", {}))
                    if "s3:prefix" not in cond:
                        problems.append(f"{role}: s3:ListBucket without an s3:prefix condition")
    return problems


def rule_front_door(t):
    """TLS-only NLB over two public subnets, TCP health checks, producers (2+) behind it, TLS ended there."""
    problems = []
    lbs = resources(t, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    lb = lbs.get("ProducerLoadBalancer")
    if lb is None:
        return ["no ProducerLoadBalancer"]
    p = props(lb)
    if p.get("Type") != "network" or p.get("Scheme") != "internet-facing":
        problems.append("ProducerLoadBalancer: not an internet-facing network load balancer")
    subnets = {ref_name(x) for x in items(p.get("Subnets"))}
    if subnets != {"PublicSubnet1", "PublicSubnet2"}:
        problems.append(f"ProducerLoadBalancer: subnets {sorted(subnets)}, expected both public subnets")
    listeners = [props(x) for x in resources(t, "AWS::ElasticLoadBalancingV2::Listener").values()
                 if ref_name(props(x).get("LoadBalancerArn")) == "ProducerLoadBalancer"]
    if not listeners:
        problems.append("ProducerLoadBalancer: no listener")
    for lp in listeners:
        if lp.get("Protocol") != "TLS":
            problems.append(f"listener on {lp.get('Port')!r}: protocol {lp.get('Protocol')}, plaintext gRPC offered")
        if lp.get("AlpnPolicy") != ["HTTP2Only"]:
            problems.append("listener: AlpnPolicy is not [HTTP2Only] (gRPC needs HTTP/2 negotiated in the handshake)")
        certs = [ref_name(c.get("CertificateArn")) for c in items(lp.get("Certificates"))]
        if certs != ["ProducerCertificateArn"]:
            problems.append("listener: certificate is not the ProducerCertificateArn parameter")
    for name, tg in resources(t, "AWS::ElasticLoadBalancingV2::TargetGroup").items():
        if props(tg).get("HealthCheckProtocol") != "TCP":
            problems.append(f"{name}: health check is not TCP")
    group = props(t["Resources"].get("ProducerGroup", {}))
    if not group:
        problems.append("no ProducerGroup")
    else:
        if ref_name(group.get("MinSize")) != "ProducerCount" or \
                int(t["Parameters"].get("ProducerCount", {}).get("MinValue", 0)) < 2:
            problems.append("ProducerGroup: MinSize is not a ProducerCount of at least 2")
        if not {ref_name(x) for x in items(group.get("TargetGroupARNs"))} & set(
                resources(t, "AWS::ElasticLoadBalancingV2::TargetGroup")):
            problems.append("ProducerGroup: not registered with the load balancer's target group")
    text = user_data_text(t, "ProducerGroup") if group else ""
    if "CLOUDIMG_TLS_TERMINATED=true" not in text:
        problems.append("ProducerGroup: producers behind the TLS listener lack CLOUDIMG_TLS_TERMINATED=true")
    out = t.get("Outputs", {}).get("ProducerEndpoint", {}).get("Value")
    if out != {"Fn::GetAtt": ["ProducerLoadBalancer", "DNSName"]}:
        problems.append("output ProducerEndpoint is not the load balancer's DNS name")
    return problems


def rule_boot_health_waits_for_broker(t):
    """A bootstrap signals success only once its binary reports a broker connection."""
    problems = []
    for name in ("ProducerGroup", "WorkerGroup"):
        text = user_data_text(t, name) if name in t["Resources"] else ""
        if not re.search(r"curl[^\n]*127\.0\.0\.1:9100/metrics[^\n]*cloudimg_broker_connected 1", text):
            problems.append(f"{name}: health check does not wait for cloudimg_broker_connected 1")
    return problems


def rule_rolling_updates_keep_one(t):
    problems = []
    for name, asg in resources(t, "AWS::AutoScaling::AutoScalingGroup").items():
        rolling = asg.get("UpdatePolicy", {}).get("AutoScalingRollingUpdate", {})
        if int(rolling.get("MinInstancesInService", 0)) < 1:
            problems.append(f"{name}: a rolling update may take every instance out of service")
    return problems


def rule_broker_choices(t):
    """Rules refuse RabbitMQ 4 off mq.m7g, a cluster on mq.t3.micro, and a cluster without quorum queues."""
    problems = []
    rules_ = t.get("Rules", {})
    def guarded(pred):
        return any(pred(json.dumps(r.get("RuleCondition", {})), json.dumps(r.get("Assertions", [])))
                   for r in rules_.values())
    if not guarded(lambda c, a: "'4." in c.replace('"', "'") and "mq.m7g" in a and "mq.m5" not in a):
        problems.append("no Rule confines RabbitMQ 4.x to mq.m7g")
    if not guarded(lambda c, a: "CLUSTER_MULTI_AZ" in c and "mq.t3.micro" in a):
        problems.append("no Rule refuses a cluster on mq.t3.micro")
    if not guarded(lambda c, a: "CLUSTER_MULTI_AZ" in c and "quorum" in a):
        problems.append("no Rule requires quorum queues for a cluster")
    if sorted(t.get("Parameters", {}).get("QueueType", {}).get("AllowedValues", [])) != ["classic", "quorum"]:
        problems.append("no QueueType parameter (classic, quorum)")
    return problems


def rule_operators_watch(t):
    """Every bootstrap runs the observability setup; logs kept LogRetentionDays; the issue's alarms
    notify the SNS topic; one dashboard of throughput, latency, backlog, errors and fleet size."""
    problems = []
    for who in ("ProducerGroup", "WorkerGroup", "BrokerHost"):
        text = user_data_text(t, who) if who in t.get("Resources", {}) else ""
        if not re.search(r"cloudimg-observe (producer|worker|broker)\b", text or ""):
            problems.append(f"{who}: does not run the observability setup (CloudWatch agent, journal shipping)")
    setup = sub_text(props(t["Resources"].get("ObservabilitySetup", {})).get("Value")) or ""
    for needed in ("amazon-cloudwatch-agent", "journalctl --follow", "127.0.0.1:9100", "fetch-config"):
        if needed not in setup:
            problems.append(f"ObservabilitySetup: lacks {needed}")
    groups = resources(t, "AWS::Logs::LogGroup")
    if not groups:
        problems.append("no log group")
    for name, g in groups.items():
        if ref_name(props(g).get("RetentionInDays")) != "LogRetentionDays":
            problems.append(f"{name}: retention is not the LogRetentionDays parameter")
    topics = set(resources(t, "AWS::SNS::Topic"))
    alarms = resources(t, "AWS::CloudWatch::Alarm")
    def watched(pred):
        return [n for n, a in alarms.items() if pred(json.dumps(props(a)))
                and {ref_name(x) for x in items(props(a).get("AlarmActions"))} & topics]
    wanted = {
        "dead letters present": lambda j: ".dead" in j and "MessageReadyCount" in j,
        "backlog high while at maximum size": lambda j: "WorkerMaxSize" in j and "MessageReadyCount" in j,
        "broker memory (Amazon MQ)": lambda j: "RabbitMQMemUsed" in j,
        "broker disk (Amazon MQ)": lambda j: "RabbitMQDiskFree" in j,
        "broker memory (self-hosted)": lambda j: "mem_used_percent" in j,
        "broker disk (self-hosted)": lambda j: "disk_used_percent" in j,
        "producer targets unhealthy": lambda j: "UnHealthyHostCount" in j,
        "worker error rate": lambda j: "cloudimg_job_errors_total" in j,
    }
    for what, pred in wanted.items():
        if not watched(pred):
            problems.append(f"no alarm to SNS for {what}")
    if "AlarmEmail" not in t.get("Parameters", {}) or not resources(t, "AWS::SNS::Subscription"):
        problems.append("no AlarmEmail parameter subscribed to the topic")
    boards = resources(t, "AWS::CloudWatch::Dashboard")
    body = json.dumps([props(b).get("DashboardBody") for b in boards.values()])
    for what, needle in (("throughput", "cloudimg_jobs_total"), ("latency", "cloudimg_job_seconds"),
                         ("backlog", "MessageReadyCount"), ("errors", "cloudimg_job_errors_total"),
                         ("fleet size", "GroupInServiceInstances")):
        if needle not in body:
            problems.append(f"dashboard lacks {what} ({needle})")
    return problems


ARM_FAMILY = re.compile(r"^[a-z]+\d+g[a-z]*\.")  # c7g., c7gn., m8g., t4g. (Graviton)


def rule_instance_types_match_architecture(t):
    """Rules refuse an explicit instance type of the other architecture, for every instance type
    parameter; each list holds only its architecture's families and the template's defaults."""
    problems = []
    defaults = {"arm64": {"c7g.large", "c7g.xlarge", "t4g.medium"}, "x86_64": {"c7i.large", "c7i.xlarge", "t3.medium"}}
    for arch in ("arm64", "x86_64"):
        found = [r for r in t.get("Rules", {}).values()
                 if r.get("RuleCondition") == {"Fn::Equals": [{"Ref": "Architecture"}, arch]}]
        if not found:
            problems.append(f"no Rule for Architecture {arch}")
            continue
        for par in ("ProducerInstanceType", "WorkerInstanceType", "BrokerInstanceType"):
            lists = []
            for a in found[0].get("Assertions", []):
                text = json.dumps(a.get("Assert"))
                if f'"Ref": "{par}"' in text and "Fn::Contains" in text:
                    lists += [x for x in json.loads(text).get("Fn::Or", [{}, {}])[1].get("Fn::Contains", [[]])[0]]
            if not lists:
                problems.append(f"{arch}: {par} is not checked against the architecture")
                continue
            wrong = [x for x in lists if bool(ARM_FAMILY.match(x)) != (arch == "arm64")]
            if wrong:
                problems.append(f"{arch}: {par} list allows other-architecture types {wrong[:5]}")
            if not defaults[arch] & set(lists):
                problems.append(f"{arch}: {par} list lacks the template's default types")
    return problems


def rule_broker_data_retained(t):
    """The self-hosted broker keeps its queues on a volume of its own that outlives the instance,
    and can run on a pinned AMI."""
    problems = []
    host = t["Resources"].get("BrokerHost")
    if host is None:
        return ["no BrokerHost"]
    vols = [ref_name(v.get("VolumeId")) for v in items(props(host).get("Volumes"))]
    volumes = resources(t, "AWS::EC2::Volume")
    if not vols or vols[0] not in volumes:
        return ["BrokerHost: no data volume of its own attached"]
    vol = volumes[vols[0]]
    for key in ("DeletionPolicy", "UpdateReplacePolicy"):
        if vol.get(key) not in ("Retain", "Snapshot"):
            problems.append(f"{vols[0]}: {key} {vol.get(key)!r} loses the queues")
    if not is_true(props(vol).get("Encrypted")):
        problems.append(f"{vols[0]}: not encrypted")
    text = user_data_text(t, "BrokerHost") or ""
    if "mount /var/lib/rabbitmq" not in text or "blkid /dev/sdf >/dev/null || mkfs" not in text:
        problems.append("BrokerHost: does not mount the data volume at /var/lib/rabbitmq (formatting only a blank one)")
    if "BrokerImageId" not in json.dumps(props(host).get("ImageId")):
        problems.append("BrokerHost: AMI cannot be pinned")
    return problems


ALL_RULES = [
    rule_bucket_versioning,
    rule_bucket_encryption,
    rule_public_access_block,
    rule_bucket_ownership,
    rule_tls_only_bucket_policy,
    rule_bucket_lifecycle,
    rule_no_s3_wildcards,
    rule_session_manager_not_ssh,
    rule_no_port_22,
    rule_ingress_scope,
    rule_imdsv2_required,
    rule_ami_from_public_ssm,
    rule_scaling_policy,
    rule_signals_and_rollback,
    rule_service_units,
    rule_amazon_mq,
    rule_backlog_published,
    rule_scale_to_zero_and_back,
    rule_operators_watch,
    rule_instance_types_match_architecture,
    rule_broker_data_retained,
    rule_outputs,
    rule_deletion_policies,
    rule_parameters_constrained,
    rule_private_placement,
    rule_iam_matches_shells,
    rule_front_door,
    rule_boot_health_waits_for_broker,
    rule_rolling_updates_keep_one,
    rule_broker_choices,
]


def check_all(t):
    """{rule name: problems} for every rule that fails."""
    out = {}
    for rule in ALL_RULES:
        problems = rule(copy.deepcopy(t))
        if problems:
            out[rule.__name__] = problems
    return out


if __name__ == "__main__":  # pragma: no cover - convenience: python3 tests/rules.py
    failures = check_all(load())
    for rule_name, problems in failures.items():
        for p in problems:
            print(f"{rule_name}: {p}")
    raise SystemExit(1 if failures else 0)
