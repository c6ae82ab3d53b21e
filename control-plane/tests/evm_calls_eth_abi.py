"""Encodes token calls with eth_abi (the Ethereum Foundation's ABI codec) and
prints, as JSON, each call's calldata beside the movements it makes, worked out
here from the arguments alone. control-plane/tests/evm_calls.rs checks that
custos' decoder reads back exactly these facts.

Usage: evm_calls_eth_abi.py SEED
"""

import json
import random
import sys

from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector

MAX_UINT = 2**256 - 1
MAX_BATCH_ENTRIES = 256

rng = random.Random(int(sys.argv[1]))


def address():
    # A few addresses with leading zero bytes, to catch a decoder that trims.
    if rng.random() < 0.2:
        return "0x" + "00" * 4 + rng.randbytes(16).hex()
    return "0x" + rng.randbytes(20).hex()


def uint():
    kind = rng.randrange(6)
    if kind == 0:
        return 0
    if kind == 1:
        return 1
    if kind == 2:
        return MAX_UINT
    if kind == 3:
        return 2**64  # just past u64
    return rng.getrandbits(rng.randrange(1, 257))


def payload():
    return rng.randbytes(rng.choice([0, 1, 31, 32, 33, 64, 65, rng.randrange(200)]))


def calldata(signature, types, args):
    return "0x" + (function_signature_to_4byte_selector(signature) + encode(types, args)).hex()


def transfer(token, amount, destination, standard, source=None, token_id=None):
    return {
        "asset": token,
        "amount": None if amount is None else str(amount),
        "destination": destination.lower(),
        "source": None if source is None else source.lower(),
        "kind": "transfer",
        "standard": standard,
        "tokenId": None if token_id is None else str(token_id),
    }


def approval(token, amount, spender, standard):
    return {
        "asset": token,
        "amount": None if amount is None else str(amount),
        "destination": spender.lower(),
        "source": None,
        "kind": "approval",
        "standard": standard,
        "tokenId": None,
    }


def case(kind, token):
    """(name, calldata, token movements or None when not understood)."""
    a, b = address(), address()
    if kind == "transfer":
        amount = uint()
        return (
            kind,
            calldata("transfer(address,uint256)", ["address", "uint256"], [a, amount]),
            [transfer(token, amount, a, "erc20")],
        )
    if kind == "transferFrom":
        amount = uint()
        return (
            kind,
            calldata(
                "transferFrom(address,address,uint256)",
                ["address", "address", "uint256"],
                [a, b, amount],
            ),
            [transfer(token, amount, b, "erc20", source=a)],
        )
    if kind == "approve":
        amount = uint()
        return (
            kind,
            calldata("approve(address,uint256)", ["address", "uint256"], [a, amount]),
            [approval(token, amount, a, "erc20")],
        )
    if kind == "increaseAllowance":
        amount = uint()
        return (
            kind,
            calldata("increaseAllowance(address,uint256)", ["address", "uint256"], [a, amount]),
            [approval(token, amount, a, "erc20")],
        )
    if kind == "erc721.safeTransferFrom":
        token_id = uint()
        return (
            kind,
            calldata(
                "safeTransferFrom(address,address,uint256)",
                ["address", "address", "uint256"],
                [a, b, token_id],
            ),
            [transfer(token, 1, b, "erc721", source=a, token_id=token_id)],
        )
    if kind == "erc721.safeTransferFrom+data":
        token_id = uint()
        return (
            kind,
            calldata(
                "safeTransferFrom(address,address,uint256,bytes)",
                ["address", "address", "uint256", "bytes"],
                [a, b, token_id, payload()],
            ),
            [transfer(token, 1, b, "erc721", source=a, token_id=token_id)],
        )
    if kind == "setApprovalForAll":
        approved = rng.random() < 0.5
        return (
            kind,
            calldata("setApprovalForAll(address,bool)", ["address", "bool"], [a, approved]),
            [approval(token, None if approved else 0, a, "erc721")],
        )
    if kind == "erc1155.safeTransferFrom":
        token_id, amount = uint(), uint()
        return (
            kind,
            calldata(
                "safeTransferFrom(address,address,uint256,uint256,bytes)",
                ["address", "address", "uint256", "uint256", "bytes"],
                [a, b, token_id, amount, payload()],
            ),
            [transfer(token, amount, b, "erc1155", source=a, token_id=token_id)],
        )
    if kind == "erc1155.safeBatchTransferFrom":
        n = rng.choice([1, 2, 3, rng.randrange(1, 20), MAX_BATCH_ENTRIES])
        ids = [uint() for _ in range(n)]
        amounts = [uint() for _ in range(n)]
        return (
            kind,
            calldata(
                "safeBatchTransferFrom(address,address,uint256[],uint256[],bytes)",
                ["address", "address", "uint256[]", "uint256[]", "bytes"],
                [a, b, ids, amounts, payload()],
            ),
            [
                transfer(token, amount, b, "erc1155", source=a, token_id=token_id)
                for token_id, amount in zip(ids, amounts)
            ],
        )
    # Encodings eth_abi accepts that the decoder must not understand.
    if kind == "batch.unequal":
        ids = [uint() for _ in range(rng.randrange(1, 5))]
        amounts = [uint() for _ in range(len(ids) + 1)]
        return (
            kind,
            calldata(
                "safeBatchTransferFrom(address,address,uint256[],uint256[],bytes)",
                ["address", "address", "uint256[]", "uint256[]", "bytes"],
                [a, b, ids, amounts, b""],
            ),
            None,
        )
    if kind == "batch.too_many":
        n = MAX_BATCH_ENTRIES + 1
        return (
            kind,
            calldata(
                "safeBatchTransferFrom(address,address,uint256[],uint256[],bytes)",
                ["address", "address", "uint256[]", "uint256[]", "bytes"],
                [a, b, list(range(n)), list(range(n)), b""],
            ),
            None,
        )
    if kind == "transfer.extra_argument":
        return (
            kind,
            calldata("transfer(address,uint256)", ["address", "uint256", "uint256"], [a, 1, 2]),
            None,
        )
    if kind == "unknown.multicall":
        return (
            kind,
            calldata("multicall(bytes[])", ["bytes[]"], [[payload()]]),
            None,
        )
    raise ValueError(kind)


KINDS = [
    "transfer",
    "transferFrom",
    "approve",
    "increaseAllowance",
    "erc721.safeTransferFrom",
    "erc721.safeTransferFrom+data",
    "setApprovalForAll",
    "erc1155.safeTransferFrom",
    "erc1155.safeBatchTransferFrom",
    "batch.unequal",
    "batch.too_many",
    "transfer.extra_argument",
    "unknown.multicall",
]

cases = []
for round_ in range(12):
    for kind in KINDS:
        to = address()
        value = rng.choice([0, 0, 1, uint()])
        name, data, tokens = case(kind, to.lower())
        if tokens is None:
            expected = None
        else:
            native = [transfer("native", value, to, None)] if value > 0 else []
            expected = native + tokens
        cases.append(
            {"name": name, "to": to, "value": str(value), "data": data, "expected": expected}
        )
# A plain transfer: one native movement, also of 0.
for value in [0, 1, MAX_UINT]:
    to = address()
    cases.append(
        {
            "name": "plain",
            "to": to,
            "value": str(value),
            "data": "0x",
            "expected": [transfer("native", value, to, None)],
        }
    )
json.dump(cases, sys.stdout)
