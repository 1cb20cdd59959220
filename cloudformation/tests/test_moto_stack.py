"""Create the stack in a moto server and check the resources moto's CloudFormation really builds.

The stack uses BrokerMode=self-hosted: moto has no AWS::AmazonMQ::Broker, so that mode is the one
moto can build end to end. Two stacks are created: x86_64 with defaults, and arm64 with explicit
sizes, so both sides of the architecture and desired-capacity conditions are exercised.

moto 5.2.1 gaps, checked on the template text instead (test_rules.py), never here:
- Skipped resource types (moto logs "No Moto CloudFormation support"): AWS::AmazonMQ::Broker,
  AWS::AutoScaling::ScalingPolicy, AWS::S3::BucketPolicy, AWS::SecretsManager::Secret,
  AWS::EC2::SecurityGroupEgress. A !Ref to a skipped resource resolves to nothing, so the
  BrokerSecretArn output is absent and the secret ARN stays unsubstituted in the user data.
- AWS::S3::Bucket: only BucketEncryption and Tags are applied; versioning, public access block,
  ownership controls and lifecycle rules are ignored.
- AWS::EC2::VPC: EnableDnsHostnames and EnableDnsSupport are ignored.
- AWS::IAM::Role: ManagedPolicyArns is ignored (the Session Manager policy is not attached), and
  inline policies come back as a Python repr instead of JSON (parsed either way below).
- AWS::EC2::SecurityGroup: inline SecurityGroupEgress is ignored (moto keeps allow-all egress).
- A statement written as !If [cond, {...}, !Ref AWS::NoValue] comes back as null instead of being
  removed from the list; a Resource that is only a !Ref to a skipped secret is dropped.
- AWS::EC2::Instance: SecurityGroupIds and LaunchTemplate are ignored (the instance gets the VPC's
  default group and no metadata options); the launch template itself is checked instead.
- AWS::AutoScaling::AutoScalingGroup: CreationPolicy, UpdatePolicy, MetricsCollection and the
  lifecycle hook are ignored; moto does not launch instances from a launch template's user data,
  and no cfn-signal is awaited.
- AWS::ElasticLoadBalancingV2::Listener: moto refuses Protocol TLS ("must be one of HTTP, HTTPS", its
  application load balancer check applied to every type), so the stack body sent to moto has the
  listener's `Protocol: TLS` read as HTTPS (the one translation, made in moto_body()), and its
  AlpnPolicy is dropped; the TLS protocol, ALPN policy and certificate are checked on the template by rule_front_door.
- AWS::ElasticLoadBalancingV2::TargetGroup has no TargetGroupFullName attribute in moto (a crash):
  moto_body() puts a fixed string in its two uses (the unhealthy-producers alarm and the dashboard).
- AWS::ElasticLoadBalancingV2::LoadBalancer: Type is ignored (moto builds an application load
  balancer); the template's `Type: network` is checked by rule_front_door.
"""

import ast
import base64
import json
import os
import sys
import time
import unittest
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ENDPOINT = os.environ.get("AWS_ENDPOINT_URL", "")
REGION = "us-east-1"
CLIENT_CIDR = "203.0.113.0/24"
TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "template.yaml")
AMI_PATH = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{}"


def _loopback(url):
    host = urllib.parse.urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _skip_reason():
    if not ENDPOINT:
        return "AWS_ENDPOINT_URL is not set (check.sh starts a moto server)"
    if not _loopback(ENDPOINT):
        return f"refusing to create stacks at non-loopback endpoint {ENDPOINT}"
    try:
        import boto3  # noqa: F401
    except ImportError:
        return "boto3 is not installed"
    return None


SKIP = _skip_reason()
if SKIP and os.environ.get("CI") == "true" and ENDPOINT == "":
    raise RuntimeError(f"moto stack test cannot run under CI: {SKIP}")


def client(service):
    import boto3

    # Explicit dummy credentials: this test only ever talks to a loopback moto server.
    return boto3.client(service, endpoint_url=ENDPOINT, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def policy_document(iam, role, name):
    """An inline role policy as a dict.

    moto 5.2.1 stores a CloudFormation inline policy as the Python repr of the dict, not as JSON, so
    the API hands back a string; parse either form.
    """
    doc = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError:
            doc = ast.literal_eval(doc)
    return doc


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def statements(doc):
    # moto resolves a statement that is `!If [cond, {...}, !Ref AWS::NoValue]` to None instead of
    # removing it from the list.
    return [st for st in as_list(doc.get("Statement")) if st]


def moto_body():
    """template.yaml with the listener protocol moto accepts (see the module docstring)."""
    with open(TEMPLATE, encoding="utf-8") as f:
        body = f.read()
    marker = "      Protocol: TLS\n"
    assert body.count(marker) == 1, "expected one TLS listener"
    body = body.replace(marker, "      Protocol: HTTPS\n")
    full_name = "!GetAtt ProducerTargetGroup.TargetGroupFullName"
    assert body.count(full_name) == 2, "expected the alarm's and the dashboard's target group name"
    return body.replace(full_name, "'targetgroup/moto-has-no-full-name/0'")


def create_stack(params):
    cf = client("cloudformation")
    name = f"cfn-test-{uuid.uuid4().hex[:10]}"
    body = moto_body()
    cf.create_stack(StackName=name, TemplateBody=body, Capabilities=["CAPABILITY_IAM"],
                    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()])
    deadline = time.monotonic() + 60
    while True:
        stack = cf.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    summaries = cf.list_stack_resources(StackName=name)["StackResourceSummaries"]
    physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId") for r in summaries if r.get("LogicalResourceId")}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return name, stack, physical, outputs


def delete_stack(name, bucket):
    cf = client("cloudformation")
    try:
        cf.delete_stack(StackName=name)
    except Exception:  # noqa: BLE001 - best-effort cleanup of a test server
        pass
    if bucket:  # DeletionPolicy: Retain keeps it; remove it so a shared moto server stays tidy.
        s3 = client("s3")
        try:
            for v in s3.list_object_versions(Bucket=bucket).get("Versions", []):
                s3.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
            s3.delete_bucket(Bucket=bucket)
        except Exception:  # noqa: BLE001
            pass


BASE_PARAMS = {
    "BrokerMode": "self-hosted",
    "ArtifactBucket": "cloudimg-artifacts-example",
    "ArtifactPrefix": "cloudimg/v0.1.0",
    "ClientCidr": CLIENT_CIDR,
}


@unittest.skipIf(SKIP, SKIP or "")
class X86StackInMoto(unittest.TestCase):
    params = dict(BASE_PARAMS)
    arch = "x86_64"
    types = {"producer": "c7i.large", "worker": "c7i.xlarge", "broker": "t3.medium"}
    desired = 1

    @classmethod
    def setUpClass(cls):
        # moto's load balancer looks the certificate up in its ACM, as AWS does.
        cls.cert_arn = client("acm").request_certificate(DomainName="cloudimg.example.com")["CertificateArn"]
        cls.name, cls.stack, cls.ids, cls.outputs = create_stack(dict(cls.params, ProducerCertificateArn=cls.cert_arn))
        cls.ec2 = client("ec2")

    @classmethod
    def tearDownClass(cls):
        delete_stack(cls.name, cls.outputs.get("BucketName"))

    # --- helpers
    def sg(self, logical):
        gid = self.ids[logical]
        return self.ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]

    def instance(self, logical):
        iid = self.ids[logical]
        return self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]

    def launch_template(self, logical):
        lt = self.ids[logical]
        versions = self.ec2.describe_launch_template_versions(LaunchTemplateId=lt)["LaunchTemplateVersions"]
        return versions[-1]["LaunchTemplateData"]

    def user_data(self, logical):
        return base64.b64decode(self.launch_template(logical)["UserData"]).decode()

    def ami(self):
        return client("ssm").get_parameter(Name=AMI_PATH.format(self.arch))["Parameter"]["Value"]

    # --- tests
    def test_stack_created(self):
        self.assertEqual(self.stack["StackStatus"], "CREATE_COMPLETE", self.stack.get("StackStatusReason"))
        # Only the self-hosted broker exists in this mode; the Amazon MQ broker is conditional.
        self.assertIn("BrokerHost", self.ids)
        self.assertNotIn("AmazonMqBroker", self.ids)

    def test_vpc_and_subnets_in_two_azs(self):
        vpc_id = self.ids["Vpc"]
        vpc = self.ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]
        self.assertEqual(vpc["CidrBlock"], "10.40.0.0/16")
        # EnableDnsHostnames/EnableDnsSupport: ignored by moto's AWS::EC2::VPC, not checked here.
        expected = {"PublicSubnet1": "10.40.0.0/24", "PublicSubnet2": "10.40.1.0/24",
                    "PrivateSubnet1": "10.40.10.0/24", "PrivateSubnet2": "10.40.11.0/24"}
        azs = {}
        for logical, cidr in expected.items():
            sn = self.ec2.describe_subnets(SubnetIds=[self.ids[logical]])["Subnets"][0]
            self.assertEqual(sn["CidrBlock"], cidr)
            self.assertEqual(sn["VpcId"], vpc_id)
            self.assertFalse(sn["MapPublicIpOnLaunch"], logical)
            azs[logical] = sn["AvailabilityZone"]
        self.assertNotEqual(azs["PublicSubnet1"], azs["PublicSubnet2"])
        self.assertNotEqual(azs["PrivateSubnet1"], azs["PrivateSubnet2"])
        self.assertEqual(azs["PublicSubnet1"], azs["PrivateSubnet1"])

    def test_routes_igw_nat_per_az_and_s3_endpoint(self):
        def routes(logical):
            rt = self.ec2.describe_route_tables(RouteTableIds=[self.ids[logical]])["RouteTables"][0]
            return {r.get("DestinationCidrBlock"): r for r in rt["Routes"]}

        self.assertEqual(routes("PublicRouteTable")["0.0.0.0/0"]["GatewayId"], self.ids["InternetGateway"])
        for n in ("1", "2"):
            nat_id = routes(f"PrivateRouteTable{n}")["0.0.0.0/0"]["NatGatewayId"]
            self.assertEqual(nat_id, self.ids[f"NatGateway{n}"])
            nat = self.ec2.describe_nat_gateways(NatGatewayIds=[nat_id])["NatGateways"][0]
            self.assertEqual(nat["SubnetId"], self.ids[f"PublicSubnet{n}"])
        ep = self.ec2.describe_vpc_endpoints(VpcEndpointIds=[self.ids["S3GatewayEndpoint"]])["VpcEndpoints"][0]
        self.assertEqual(ep["ServiceName"], f"com.amazonaws.{REGION}.s3")
        self.assertEqual(ep["VpcEndpointType"], "Gateway")
        self.assertEqual(set(ep["RouteTableIds"]), {self.ids[k] for k in
                                                    ("PublicRouteTable", "PrivateRouteTable1", "PrivateRouteTable2")})

    def test_security_groups_open_only_tls_grpc_and_broker(self):
        nlb = self.sg("LoadBalancerSecurityGroup")
        self.assertEqual(len(nlb["IpPermissions"]), 1)
        perm = nlb["IpPermissions"][0]
        self.assertEqual((perm["IpProtocol"], perm["FromPort"], perm["ToPort"]), ("tcp", 443, 443))
        self.assertEqual([r["CidrIp"] for r in perm["IpRanges"]], [CLIENT_CIDR])

        producer = self.sg("ProducerSecurityGroup")
        self.assertEqual(len(producer["IpPermissions"]), 1)
        perm = producer["IpPermissions"][0]
        self.assertEqual((perm["IpProtocol"], perm["FromPort"], perm["ToPort"]), ("tcp", 50051, 50051))
        self.assertEqual(perm.get("IpRanges", []), [])
        self.assertEqual([p["GroupId"] for p in perm["UserIdGroupPairs"]], [self.ids["LoadBalancerSecurityGroup"]])

        self.assertEqual(self.sg("WorkerSecurityGroup")["IpPermissions"], [])

        broker = self.sg("BrokerSecurityGroup")
        sources = set()
        for perm in broker["IpPermissions"]:
            self.assertEqual((perm["IpProtocol"], perm["FromPort"], perm["ToPort"]), ("tcp", 5672, 5672))
            self.assertEqual(perm.get("IpRanges", []), [])
            sources |= {p["GroupId"] for p in perm["UserIdGroupPairs"]}
        self.assertEqual(sources, {self.ids["ProducerSecurityGroup"], self.ids["WorkerSecurityGroup"]})

        all_groups = self.ec2.describe_security_groups(
            Filters=[{"Name": "vpc-id", "Values": [self.ids["Vpc"]]}])["SecurityGroups"]
        for group in all_groups:
            for perm in group["IpPermissions"]:
                if perm["IpProtocol"] == "-1":
                    # moto's default group of a new VPC allows all traffic from itself; nothing of ours uses it.
                    self.assertEqual(group["GroupName"], "default")
                    continue
                self.assertFalse(perm["FromPort"] <= 22 <= perm["ToPort"], f"port 22 open in {group['GroupId']}")

    def test_bucket_exists_and_is_encrypted(self):
        s3 = client("s3")
        bucket = self.outputs["BucketName"]
        self.assertEqual(bucket, self.ids["ImageBucket"])
        s3.head_bucket(Bucket=bucket)
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        self.assertEqual(rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"], "AES256")
        # Versioning, public access block, ownership and lifecycle: ignored by moto, see test_rules.py.

    def test_launch_templates_require_imdsv2_and_encrypt_volumes(self):
        for logical in ("ProducerLaunchTemplate", "WorkerLaunchTemplate", "BrokerHostLaunchTemplate"):
            with self.subTest(launch_template=logical):
                data = self.launch_template(logical)
                self.assertEqual(data["MetadataOptions"]["HttpTokens"], "required")
                self.assertEqual(int(data["MetadataOptions"]["HttpPutResponseHopLimit"]), 1)
                ebs = data["BlockDeviceMappings"][0]["Ebs"]
                self.assertTrue(ebs["Encrypted"])
                self.assertEqual(ebs["VolumeType"], "gp3")
                self.assertNotIn("KeyName", data)

    def test_worker_launch_template(self):
        data = self.launch_template("WorkerLaunchTemplate")
        self.assertEqual(data["ImageId"], self.ami())
        self.assertEqual(data["InstanceType"], self.types["worker"])
        self.assertEqual(data["SecurityGroupIds"], [self.ids["WorkerSecurityGroup"]])
        profile = client("iam").get_instance_profile(InstanceProfileName=self.ids["WorkerInstanceProfile"])
        self.assertEqual(data["IamInstanceProfile"]["Arn"], profile["InstanceProfile"]["Arn"])

    def test_user_data_is_resolved_for_this_stack(self):
        broker_ip = self.instance("BrokerHost")["PrivateIpAddress"]
        bucket = self.outputs["BucketName"]
        for logical, resource, binary in (("WorkerLaunchTemplate", "WorkerGroup", "cloudimg-worker"),
                                          ("ProducerLaunchTemplate", "ProducerGroup", "cloudimg-producer")):
            with self.subTest(launch_template=logical):
                text = self.user_data(logical)
                self.assertIn(f"--stack '{self.name}' --resource {resource} --region '{REGION}'", text)
                self.assertIn(f"AMQP_URL=amqp://$mq_user:$mq_pass@{broker_ip}:5672/%2f", text)
                self.assertIn(f"BUCKET_NAME={bucket}\n", text)
                self.assertIn("CLOUDIMG_QUEUE=images\n", text)
                self.assertIn(f"AWS_REGION={REGION}\n", text)
                self.assertIn('src="s3://cloudimg-artifacts-example/cloudimg/v0.1.0/$arch"', text)
                self.assertIn(f"ExecStart=/opt/cloudimg/bin/{binary}", text)
                self.assertNotIn("${AmqpScheme}", text)
                self.assertNotIn("${BrokerAddress}", text)
        self.assertIn("CLOUDIMG_LISTEN=0.0.0.0:50051", self.user_data("ProducerLaunchTemplate"))
        self.assertIn("CLOUDIMG_TLS_TERMINATED=true\n", self.user_data("ProducerLaunchTemplate"))
        self.assertIn(f"--auto-scaling-group-name '{self.name}-workers'", self.user_data("WorkerLaunchTemplate"))
        broker_text = self.user_data("BrokerHostLaunchTemplate")
        self.assertIn(f'dims="Stack={self.name},Queue=$q"', broker_text)

    def test_worker_group(self):
        asg = client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[f"{self.name}-workers"])["AutoScalingGroups"][0]
        self.assertEqual(self.outputs["WorkerGroupName"], f"{self.name}-workers")
        self.assertEqual((asg["MinSize"], asg["MaxSize"]), (int(self.params.get("WorkerMinSize", 1)),
                                                             int(self.params.get("WorkerMaxSize", 4))))
        self.assertEqual(asg["DesiredCapacity"], self.desired)
        self.assertEqual(set(asg["VPCZoneIdentifier"].split(",")),
                         {self.ids["PrivateSubnet1"], self.ids["PrivateSubnet2"]})
        self.assertEqual(asg["LaunchTemplate"]["LaunchTemplateId"], self.ids["WorkerLaunchTemplate"])
        self.assertNotIn("LaunchConfigurationName", asg)

    def test_instances(self):
        cases = (("BrokerHost", "PrivateSubnet1", self.types["broker"], "BrokerHostInstanceProfile"),)
        iam = client("iam")
        for logical, subnet, itype, profile in cases:
            with self.subTest(instance=logical):
                inst = self.instance(logical)
                self.assertEqual(inst["ImageId"], self.ami())
                self.assertEqual(inst["InstanceType"], itype)
                self.assertEqual(inst["SubnetId"], self.ids[subnet])
                arn = iam.get_instance_profile(InstanceProfileName=self.ids[profile])["InstanceProfile"]["Arn"]
                self.assertEqual(inst["IamInstanceProfile"]["Arn"], arn)
                self.assertNotIn("KeyName", inst)

    def test_producers_behind_the_tls_load_balancer(self):
        elb = client("elbv2")
        lb = elb.describe_load_balancers(LoadBalancerArns=[self.ids["ProducerLoadBalancer"]])["LoadBalancers"][0]
        self.assertEqual(lb["Scheme"], "internet-facing")  # Type: moto builds "application" whatever it says
        self.assertEqual({z["SubnetId"] for z in lb["AvailabilityZones"]},
                         {self.ids["PublicSubnet1"], self.ids["PublicSubnet2"]})
        self.assertEqual(self.outputs["ProducerEndpoint"], lb["DNSName"])
        listener = elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"][0]
        self.assertEqual(listener["Port"], 443)  # Protocol: see moto_body()
        self.assertEqual([c["CertificateArn"] for c in listener["Certificates"]], [self.cert_arn])
        tg = elb.describe_target_groups(TargetGroupArns=[self.ids["ProducerTargetGroup"]])["TargetGroups"][0]
        self.assertEqual((tg["Protocol"], tg["Port"], tg["HealthCheckProtocol"]), ("TCP", 50051, "TCP"))

        asg = client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.ids["ProducerGroup"]])["AutoScalingGroups"][0]
        self.assertEqual((asg["MinSize"], asg["MaxSize"]), (2, 2))
        self.assertEqual(set(asg["VPCZoneIdentifier"].split(",")),
                         {self.ids["PrivateSubnet1"], self.ids["PrivateSubnet2"]})
        self.assertEqual(asg["TargetGroupARNs"], [tg["TargetGroupArn"]])
        self.assertEqual(asg["LaunchTemplate"]["LaunchTemplateId"], self.ids["ProducerLaunchTemplate"])
        data = self.launch_template("ProducerLaunchTemplate")
        self.assertEqual(data["ImageId"], self.ami())
        self.assertEqual(data["InstanceType"], self.types["producer"])
        self.assertEqual(data["SecurityGroupIds"], [self.ids["ProducerSecurityGroup"]])

    def test_broker_outputs(self):
        broker_ip = self.instance("BrokerHost")["PrivateIpAddress"]
        self.assertEqual(self.outputs["BrokerEndpoint"], f"amqp://{broker_ip}:5672")
        self.assertEqual(self.outputs["QueueName"], "images")

    def test_roles_and_least_privilege(self):
        iam = client("iam")
        bucket_arn = f"arn:aws:s3:::{self.outputs['BucketName']}"
        for logical in ("ProducerRole", "WorkerRole", "BrokerHostRole"):
            with self.subTest(role=logical):
                role = iam.get_role(RoleName=self.ids[logical])["Role"]
                principals = [s["Principal"]["Service"] for s in role["AssumeRolePolicyDocument"]["Statement"]]
                self.assertEqual(principals, ["ec2.amazonaws.com"])
                for pname in iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]:
                    doc = policy_document(iam, role["RoleName"], pname)
                    for st in statements(doc):
                        actions = as_list(st["Action"])
                        # A Resource that is only a !Ref to a secret has no value in moto (no
                        # Secrets Manager support in its CloudFormation), so the key is dropped.
                        resources = as_list(st.get("Resource"))
                        for a in actions:
                            self.assertNotIn("*", a, f"{logical}: wildcard action {a}")
                        if any(a.startswith("s3:") for a in actions):
                            self.assertNotIn("*", resources, f"{logical}: S3 on every resource")

        worker = policy_document(iam, self.ids["WorkerRole"], "cloudimg-worker")
        by_sid = {s["Sid"]: s for s in statements(worker)}
        self.assertEqual(by_sid["ConsumeStagedUploads"]["Resource"], f"{bucket_arn}/staging/*")
        self.assertEqual(sorted(by_sid["WriteResultsAndFailureMarkers"]["Resource"]),
                         [f"{bucket_arn}/failed/*", f"{bucket_arn}/gray/*"])
        self.assertEqual(by_sid["ReadReleaseArtifacts"]["Resource"],
                         "arn:aws:s3:::cloudimg-artifacts-example/cloudimg/v0.1.0/*")
        self.assertNotIn("s3:PutObject", by_sid["ConsumeStagedUploads"]["Action"])
        self.assertTrue(by_sid["CompleteOwnLifecycleHook"]["Resource"].endswith(
            f":autoScalingGroupName/{self.name}-workers"))

        producer = policy_document(iam, self.ids["ProducerRole"], "cloudimg-producer")
        by_sid = {s["Sid"]: s for s in statements(producer)}
        self.assertEqual(by_sid["StageUploads"]["Resource"], f"{bucket_arn}/staging/*")
        self.assertEqual(sorted(by_sid["AnswerJobStatus"]["Resource"]),
                         [f"{bucket_arn}/failed/*", f"{bucket_arn}/gray/*"])
        self.assertNotIn("UseBucketKey", by_sid)  # BucketKmsKeyArn empty: no KMS statement


@unittest.skipIf(SKIP, SKIP or "")
class Arm64StackInMoto(X86StackInMoto):
    """Graviton: the AMI and default instance types follow Architecture; explicit sizes apply."""

    params = dict(BASE_PARAMS, Architecture="arm64", WorkerMinSize="2", WorkerMaxSize="6",
                  WorkerDesiredCapacity="3", WorkerInstanceType="c8g.2xlarge", RequireApiToken="false")
    arch = "arm64"
    types = {"producer": "c7g.large", "worker": "c8g.2xlarge", "broker": "t4g.medium"}
    desired = 3

    def test_token_output_absent_when_not_required(self):
        self.assertNotIn("ApiTokenSecretArn", self.outputs)


if __name__ == "__main__":
    unittest.main()
