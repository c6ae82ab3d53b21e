"""Decodes a signed EIP-1559 transaction with eth-account (the Ethereum
ecosystem's own library) and prints its fields and recovered sender as JSON.

Usage: check_evm_tx.py 0x<rawTransaction>
"""
import json
import sys

from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from eth_utils import keccak
from hexbytes import HexBytes

raw = sys.argv[1]
tx = TypedTransaction.from_bytes(HexBytes(raw))
fields = tx.as_dict()
print(json.dumps({
    "sender": Account.recover_transaction(raw),
    "type": tx.transaction_type,
    "chainId": fields["chainId"],
    "nonce": fields["nonce"],
    "to": fields["to"].hex() if isinstance(fields["to"], (bytes, bytearray)) else fields["to"],
    "value": str(fields["value"]),
    "gas": fields["gas"],
    "maxFeePerGas": str(fields["maxFeePerGas"]),
    "maxPriorityFeePerGas": str(fields["maxPriorityFeePerGas"]),
    "hash": "0x" + keccak(HexBytes(raw)).hex().removeprefix("0x"),
    "signingHash": "0x" + tx.hash().hex().removeprefix("0x"),
}))
