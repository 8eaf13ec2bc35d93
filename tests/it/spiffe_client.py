"""A real SPIFFE workload on py-spiffe (PyPI `spiffe` 0.3.2), run by tests/it/spiffe_clients.rs
inside an exec task and a container: a second, independent client of skep's Workload API.

Through SPIFFE_ENDPOINT_SOCKET it fetches the X.509-SVID and bundle (`svid <id>`,
`bundle <trust domain>`), waits on the X.509 context stream for a different SVID
(`rotated`), then fetches a JWT-SVID for audience `test` and validates it through the API
(`jwt ok`). A failure prints `error: ...` and exits 1.
"""

import sys
import threading

from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import WorkloadApiClient

ROTATION_WAIT_SECONDS = 120


def say(line):
    print(line, flush=True)


def main():
    client = WorkloadApiClient(default_timeout=30)
    svid = client.fetch_x509_svid()
    spiffe_id = svid.spiffe_id
    say("svid {}".format(spiffe_id))
    bundles = client.fetch_x509_bundles()
    bundle = bundles.get_bundle_for_trust_domain(spiffe_id.trust_domain)
    if bundle is None or not bundle.x509_authorities:
        raise RuntimeError("no bundle for {}".format(spiffe_id.trust_domain))
    say("bundle {}".format(spiffe_id.trust_domain))

    first_leaf = svid.leaf.public_bytes(Encoding.DER)
    rotated = threading.Event()
    failed = []

    def on_success(context):
        leaf = context.default_svid.leaf.public_bytes(Encoding.DER)
        if leaf != first_leaf:
            if str(context.default_svid.spiffe_id) != str(spiffe_id):
                failed.append("rotated to {}".format(context.default_svid.spiffe_id))
            rotated.set()

    def on_error(err):
        failed.append(str(err))
        rotated.set()

    watch = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
    if not rotated.wait(ROTATION_WAIT_SECONDS):
        raise RuntimeError("no rotation within {} s".format(ROTATION_WAIT_SECONDS))
    watch.cancel()
    if failed:
        raise RuntimeError("stream: {}".format(failed[0]))
    say("rotated")

    jwt = client.fetch_jwt_svid(audience={"test"})
    valid = client.validate_jwt_svid(jwt.token, "test")
    if str(valid.spiffe_id) != str(spiffe_id):
        raise RuntimeError("the JWT-SVID names {}".format(valid.spiffe_id))
    try:
        client.validate_jwt_svid(jwt.token, "other")
    except Exception:
        pass
    else:
        raise RuntimeError("the JWT-SVID validated for another audience")
    say("jwt ok")
    client.close()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure as the test's evidence
        say("error: {}: {}".format(type(e).__name__, e))
        sys.exit(1)
