"""Valid examples accepted, per operation, from a Schemathesis NDJSON report.

Schemathesis's positive_data_acceptance check fails a run on the first
schema-valid request the server refuses; some refusals are right (a request
can satisfy the document and still break a rule between two fields, or name
a cursor that was never issued). The issue's bar is per operation: none
whose valid examples are MOSTLY refused. This reads every positive case of
the report and prints, per operation, how many were sent and how many were
refused as invalid (400, 413, 415, 422); it exits 1 when an operation with
at least MIN_CASES positive cases had more than half refused.

Refusals whose code names the server's state rather than the request's
shape (STATE: the named key's type or usage, the registered nodes, a key's
latest version, a cursor or ciphertext this server never issued) are
counted apart and not held against the document: no schema can know them.

    python scripts/schemathesis-acceptance.py REPORT.ndjson
"""

import base64
import collections
import json
import sys

REFUSED = {400, 413, 415, 422}
MIN_CASES = 10
STATE = {
    "usage_not_allowed",  # the key's usage (sign-only key asked to encrypt)
    "unsupported_operation",  # the key's type (AES key asked to sign)
    "invalid_algorithm",  # the key's algorithm
    "unknown_node",  # names no registered node
    "invalid_parties",  # more parties than registered nodes
    "invalid_threshold",  # more signers than registered nodes
    "invalid_min_decryption_version",  # above the key's latest version
    "invalid_cursor",  # a cursor this server never issued
    "invalid_ciphertext_prefix",  # not a ciphertext this server issued
    "decrypt_failed",
    "decryption_failed",
    "invalid_message",  # a wallet's protocol decides the message's size
    "invalid_usage",  # the key type decides which usage it may have
}


def error_code(response: dict) -> str:
    """The stable code of an error answer, or ''."""
    content = (response.get("content") or {}).get("$base64")
    if not content:
        return ""
    try:
        return json.loads(base64.b64decode(content))["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""


def main(path: str) -> int:
    sent = collections.Counter()
    refused = collections.Counter()
    by_state = collections.Counter()
    for line in open(path, encoding="utf-8"):
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished.get("recorder") or {}
        cases = recorder.get("cases") or {}
        interactions = recorder.get("interactions") or {}
        for case_id, case in cases.items():
            value = case.get("value") or {}
            meta = value.get("meta") or {}
            if (meta.get("generation") or {}).get("mode") != "positive":
                continue
            interaction = interactions.get(case_id)
            if not interaction or not interaction.get("response"):
                continue
            label = f"{value.get('method')} {value.get('path')}"
            sent[label] += 1
            response = interaction["response"]
            if response.get("status_code") in REFUSED:
                if error_code(response) in STATE:
                    by_state[label] += 1
                else:
                    refused[label] += 1
    failing = []
    for label in sorted(sent):
        share = refused[label] / sent[label]
        mark = ""
        if sent[label] >= MIN_CASES and share > 0.5:
            failing.append(label)
            mark = "  <-- mostly refused"
        print(f"{label:60} {sent[label]:6} valid sent {refused[label]:6} refused ({share:.0%})"
              f" {by_state[label]:6} refused by state{mark}")
    total_sent, total_refused = sum(sent.values()), sum(refused.values())
    print(json.dumps({"bench": "schemathesis_acceptance", "operations": len(sent),
                      "valid_sent": total_sent, "valid_refused": total_refused,
                      "refused_by_state": sum(by_state.values()),
                      "mostly_refused": failing}))
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
