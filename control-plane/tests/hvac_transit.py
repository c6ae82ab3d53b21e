"""Drives Custos' Vault-compatible transit routes with hvac, HashiCorp
Vault's own Python client, unchanged: a Custos token goes where a Vault token
would. Usage: hvac_transit.py URL TOKEN APPROVER_TOKEN. Prints HVAC_OK when
every check held.

Custos puts a rotation behind an admin's approval (its default policy): the
rotate call answers 202 with the approval's id, a second admin approves it
through Custos' own API, and the stored rotation runs."""

import base64
import sys

import hvac
import requests

url, token, approver = sys.argv[1], sys.argv[2], sys.argv[3]
client = hvac.Client(url=url, token=token)
transit = client.secrets.transit
plaintext = base64.b64encode(b"hello from hvac").decode()

transit.create_key(name="hvac-key")
ciphertext = transit.encrypt_data(name="hvac-key", plaintext=plaintext)["data"]["ciphertext"]
assert ciphertext.startswith("vault:v1:"), ciphertext
assert transit.decrypt_data(name="hvac-key", ciphertext=ciphertext)["data"]["plaintext"] == plaintext

pending = transit.rotate_key(name="hvac-key")
assert pending.status_code == 202, pending.text
approval = pending.json()["approvalId"]
assert transit.read_key(name="hvac-key")["data"]["latest_version"] == 1
approved = requests.post(
    f"{url}/api/v1/approvals/{approval}/approve",
    headers={"Authorization": f"Bearer {approver}"},
    json={},
    timeout=30,
)
assert approved.status_code == 200, approved.text
key = transit.read_key(name="hvac-key")["data"]
assert key["latest_version"] == 2, key
rewrapped = transit.rewrap_data(name="hvac-key", ciphertext=ciphertext)["data"]["ciphertext"]
assert rewrapped.startswith("vault:v2:"), rewrapped
assert transit.decrypt_data(name="hvac-key", ciphertext=rewrapped)["data"]["plaintext"] == plaintext

data_key = transit.generate_data_key(name="hvac-key", key_type="plaintext")["data"]
assert len(base64.b64decode(data_key["plaintext"])) == 32
opened = transit.decrypt_data(name="hvac-key", ciphertext=data_key["ciphertext"])["data"]["plaintext"]
assert opened == data_key["plaintext"]
wrapped = transit.generate_data_key(name="hvac-key", key_type="wrapped")["data"]
assert wrapped.get("plaintext") is None and wrapped["ciphertext"].startswith("vault:v2:"), wrapped

transit.create_key(name="hvac-signer", key_type="ecdsa-p256")
signature = transit.sign_data(name="hvac-signer", hash_input=plaintext)["data"]["signature"]
assert transit.verify_signed_data(
    name="hvac-signer", hash_input=plaintext, signature=signature
)["data"]["valid"] is True
other = base64.b64encode(b"something else").decode()
assert transit.verify_signed_data(
    name="hvac-signer", hash_input=other, signature=signature
)["data"]["valid"] is False

try:
    transit.decrypt_data(name="hvac-key", ciphertext="vault:v1:AAAA")
    raise SystemExit("a truncated ciphertext was accepted")
except hvac.exceptions.InvalidRequest:
    pass

print("HVAC_OK")
