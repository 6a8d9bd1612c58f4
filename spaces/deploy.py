"""Deploy the Space: upload exactly what it needs (app.py, clipsearch/, requirements.txt, card) in one commit.

The uploaded requirements.txt adds PyTorch's CPU wheel index to the repo's own (see TORCH_CPU_INDEX).

    python spaces/deploy.py SPACE_ID [--index-repo REPO] [--private | --public]

Without --private or --public no visibility is sent: a new Space gets its namespace's default (an organisation may
make every new repo private). An existing Space's visibility is never changed.

Needs HF_TOKEN (or `hf auth login`) with write access to SPACE_ID. Run from anywhere; paths are repo-relative.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

ROOT = Path(__file__).resolve().parent.parent
CARD = Path(__file__).resolve().parent / "README.md"
# A Space installs requirements.txt with pip on Linux, where PyPI's torch is the CUDA build (~530 MB plus several GB
# of CUDA libraries) although cpu-basic has no GPU. PyTorch's CPU index serves the same release as 2.13.0+cpu, which
# pip prefers (a local version sorts above the plain one) while the pin stays torch==2.13.0 for local and CI installs.
TORCH_CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
APP_SUFFIXES = (".py", ".js")  # the package's modules and the browser scripts it serves (web/static/atlas.js)


BUILDER_ONLY = "# builder only"  # a requirements.txt line ending so is left out of the Space (the app never imports it)


def space_requirements(root: Path = ROOT) -> bytes:
    """The repo's requirements.txt with PyTorch's CPU wheel index added and builder-only lines left out: what the
    Space installs."""
    lines = (root / "requirements.txt").read_text().splitlines(keepends=True)
    text = "".join(line for line in lines if not line.rstrip().endswith(BUILDER_ONLY))
    return (f"# Deployed by spaces/deploy.py: the CPU build of torch (the Space has no GPU).\n{TORCH_CPU_INDEX}\n"
            + text).encode()


def space_files(root: Path = ROOT) -> dict[str, Path | bytes]:
    """{path in the Space repo: local file}: the app, the shared package, requirements and the card — nothing else
    (no builder, no tests, and never this spaces/ folder: gradio imports a module called `spaces`)."""
    files = {"app.py": root / "app.py", "requirements.txt": space_requirements(root), "README.md": CARD}
    for path in sorted((root / "clipsearch").rglob("*")):
        if path.suffix in APP_SUFFIXES:
            files[path.relative_to(root).as_posix()] = path
    return files


def deploy(space_id: str, *, api: HfApi, index_repo: str | None = None, visibility: str | None = None) -> str:
    """Upload the Space's files as one commit; `visibility` ("private" or "public") applies only to a Space this call
    creates (None: its namespace's default)."""
    if space_exists(api, space_id):
        if visibility is not None:
            print(f"note: {space_id} already exists: its visibility is left as it is (--{visibility} applies only to "
                  "a new Space)", file=sys.stderr)
    else:
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", exist_ok=True, visibility=visibility)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data if isinstance(data, bytes) else str(data))
                  for name, data in space_files().items()]
    info = api.create_commit(space_id, operations, repo_type="space", commit_message="Deploy COCO CLIP visual search")
    if index_repo:
        api.add_space_variable(space_id, "INDEX_REPO", index_repo)
    return info.oid


def space_exists(api: HfApi, space_id: str) -> bool:
    """Whether the Space exists (one this token cannot read included), asked with a refs listing."""
    try:
        api.list_repo_refs(space_id, repo_type="space")
    except GatedRepoError:
        return True
    except RepositoryNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python spaces/deploy.py", description=__doc__.splitlines()[0])
    parser.add_argument("space_id", help="owner/name of the Space (created if missing)")
    parser.add_argument("--index-repo", help="set the Space variable INDEX_REPO to this dataset repo")
    parser.add_argument("--private", action="store_true", help="create the Space private (a new Space only)")
    parser.add_argument("--public", action="store_true", help="create the Space public (a new Space only; without "
                        "either flag it gets its namespace's default visibility)")
    args = parser.parse_args(argv)
    if args.private and args.public:
        parser.error("--private and --public contradict each other: pass one of them, or neither to keep the "
                     "visibility the Hub gives new repos in that namespace")
    if not get_token():
        print("error: deploying needs a Hub token with write access: set HF_TOKEN or run `hf auth login`.",
              file=sys.stderr)
        return 2
    try:
        visibility = "private" if args.private else "public" if args.public else None
        commit = deploy(args.space_id, api=HfApi(), index_repo=args.index_repo, visibility=visibility)
    except HfHubHTTPError as error:
        print(f"error: the Hub refused the deploy to {args.space_id}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"deployed {args.space_id} at commit {commit[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
