"""A Hugging Face Hub-compatible HTTP server on 127.0.0.1 for the real `huggingface_hub` client (FastAPI + uvicorn)."""

# Modules, by concern:
# - server.py     HubServer: start/stop on a free port, dispatch, bearer tokens, the record of every request
# - storage.py    repos in memory: snapshot commits, branches, tags, pull-request refs, tree listings
# - api.py        JSON API reads (repo info, refs, tree, commits, discussions) and account routes
# - writes.py     JSON API writes (preupload, NDJSON commits, tags, branches)
# - downloads.py  /resolve: Hub headers, byte ranges, bytes served
# - faults.py     injected failures on downloads: error statuses, cut connections, corrupted bytes
# - seeding.py    test helpers that seed or inspect storage directly
# - client.py     how to point the real client at the server (`patch_client`)
# - protocol.py   the Hub's wire conventions (URL prefixes, dates, blob ids, error responses)
#
# Limitations: repo ids must be namespaced ("user/name"); no LFS/Xet upload protocol, no pull requests through the
# write API (`create_pr` is refused), single page listings (no pagination `Link` header), everything kept in memory.

from .downloads import _parse_range
from .faults import _CutResponse
from .protocol import _HubError
from .server import HubServer, RequestRecord

# _HubError and _CutResponse let a test wrap a handler to fail the way the Hub does (tests/test_faults.py); patch
# `_parse_range` where it is used, in testkit.hub.downloads.
__all__ = ["HubServer", "RequestRecord", "_CutResponse", "_HubError", "_parse_range"]
