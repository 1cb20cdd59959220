"""Every bootstrap has a route to what it calls before it boots (network.py), and the check can fail.

The fixture fixtures/template-before-issue-14.yaml is the template as it was when issue 14 was filed:
its producer sat in a public subnet with no public address at launch (the Elastic IP attached after
the instance existed), and nothing made the broker host or the workers wait for the NAT routes.
"""

import copy
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import network  # noqa: E402
import rules  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = rules.load()
BEFORE = rules.load(os.path.join(HERE, "fixtures", "template-before-issue-14.yaml"))
BOOTERS = ("ProducerGroup", "WorkerGroup", "BrokerHost")


def mutated(fn):
    t = copy.deepcopy(TEMPLATE)
    fn(t)
    return t


def drop_dependency(t, holder, dep):
    res = t["Resources"][holder]
    res["DependsOn"] = [d for d in res.get("DependsOn", []) if d != dep]


class BootRoutes(unittest.TestCase):
    def problems_of(self, t, who):
        return [p for p in network.check(t) if p.startswith(who)]

    def test_template_boots_with_routes(self):
        self.assertEqual(network.check(copy.deepcopy(TEMPLATE)), [])

    def test_every_bootstrap_is_modelled(self):
        # The check would pass vacuously if it found no caller: each of these calls AWS and cfn-signal.
        found = {name: network.calls(text) for name, _, _, text in network.booters(TEMPLATE)}
        for name in BOOTERS:
            with self.subTest(resource=name):
                self.assertEqual(set(found[name]), {"internet", "s3"}, found[name])

    def test_template_before_the_fix_fails(self):
        problems = network.check(copy.deepcopy(BEFORE))
        producer = self.problems_of(BEFORE, "ProducerInstance")
        self.assertTrue(any("no public address at launch" in p for p in producer), problems)
        for who, route in (("BrokerHost", "PrivateDefaultRoute1"), ("WorkerGroup", "PrivateDefaultRoute1"),
                           ("WorkerGroup", "PrivateDefaultRoute2")):
            with self.subTest(resource=who, route=route):
                self.assertTrue(any(f"may boot before route {route}" in p for p in self.problems_of(BEFORE, who)),
                                problems)

    def test_public_subnet_without_public_address(self):
        def m(t):
            t["Resources"]["ProducerGroup"]["Properties"]["VPCZoneIdentifier"] = [
                {"Ref": "PublicSubnet1"}, {"Ref": "PublicSubnet2"}]
            t["Resources"]["ProducerGroup"]["DependsOn"] += ["PublicDefaultRoute", "PublicSubnet1Routes",
                                                              "PublicSubnet2Routes", "GatewayAttachment"]
        t = mutated(m)
        self.assertTrue(any("no public address at launch" in p for p in self.problems_of(t, "ProducerGroup")),
                        network.check(t))
        # ...and the same placement with a public address at launch is accepted: the model knows both paths.
        for n in ("1", "2"):
            t["Resources"][f"PublicSubnet{n}"]["Properties"]["MapPublicIpOnLaunch"] = True
        self.assertEqual(self.problems_of(t, "ProducerGroup"), [])

    def test_no_nat_route_dependency(self):
        for who in BOOTERS:
            with self.subTest(resource=who):
                t = mutated(lambda t, who=who: drop_dependency(t, who, "PrivateDefaultRoute1"))
                self.assertTrue(any("may boot before route PrivateDefaultRoute1" in p
                                    for p in self.problems_of(t, who)), network.check(t))

    def test_nat_without_its_public_route(self):
        t = mutated(lambda t: t["Resources"]["NatGateway2"].pop("DependsOn"))
        self.assertTrue(any("NAT gateway NatGateway2's subnet" in p for p in network.check(t)), network.check(t))

    def test_no_s3_endpoint(self):
        def m(t):
            t["Resources"].pop("S3GatewayEndpoint")
            for who in BOOTERS:
                drop_dependency(t, who, "S3GatewayEndpoint")
        t = mutated(m)
        for who in BOOTERS:
            with self.subTest(resource=who):
                self.assertTrue(any("no S3 gateway endpoint" in p for p in self.problems_of(t, who)), network.check(t))

    def test_s3_endpoint_not_awaited(self):
        t = mutated(lambda t: drop_dependency(t, "WorkerGroup", "S3GatewayEndpoint"))
        self.assertTrue(any("before the S3 gateway endpoint" in p for p in self.problems_of(t, "WorkerGroup")))

    def test_elastic_ip_after_boot_is_no_public_address(self):
        # The exact shape: an instance in a public subnet whose only public address is an EIP.
        def m(t):
            t["Resources"]["Lone"] = {"Type": "AWS::EC2::Instance", "DependsOn": [
                "PublicDefaultRoute", "PublicSubnet1Routes", "S3GatewayEndpoint"], "Properties": {
                "SubnetId": {"Ref": "PublicSubnet1"},
                "UserData": {"Fn::Base64": "#!/bin/bash\n/opt/aws/bin/cfn-signal -e 0\n"}}}
            t["Resources"]["LoneEip"] = {"Type": "AWS::EC2::EIP",
                                         "Properties": {"InstanceId": {"Ref": "Lone"}, "Domain": "vpc"}}
        self.assertTrue(any("no public address at launch" in p for p in self.problems_of(mutated(m), "Lone")))


if __name__ == "__main__":
    unittest.main()
