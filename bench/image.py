"""Image benchmark: the product image's size, what makes it up, and how long it takes to build, cold and warm.

    .venv/bin/python bench/image.py [--skip-cold] [--with-base]

Runs scripts/build-image (buildah, the Containerfile's own steps) three ways and prints wall times:
  cold   every layer rebuilt (--no-cache): apt-get in both stages, pip downloading and installing every dependency,
         the accelerator compiled; with --with-base also the debootstrap'ed base image made again
  warm   nothing changed, every layer cached (what a rebuild costs when only the archive is missing)
  edit   one source file changed: the COPY of that package and everything after it run again
then the uncompressed size of the image and of its parts (base, virtual environment, the largest packages in it).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "scripts" / "build-image"
MiB = 1024 * 1024


def _archive() -> Path | None:
    got = subprocess.run([str(BUILD), "--path"], capture_output=True, text=True, check=False)
    return Path(got.stdout.strip().split("=", 1)[1]) if got.returncode == 0 else None


def _build(*args: str) -> float:
    archive = _archive()
    if archive is not None:
        archive.unlink(missing_ok=True)  # the script skips the build while the archive of these sources exists
    started = time.monotonic()
    subprocess.run([str(BUILD), *args], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def _image_name() -> str:
    version = next(
        line.split(":", 1)[1].strip().strip('"')
        for line in (REPO / "charts/harvester-pcidevices-controller/Chart.yaml").read_text().splitlines()
        if line.startswith("appVersion:")
    )
    return f"docker.io/library/harvester-pcidevices:{version}"


def _du(root: Path, rel: str) -> int:
    out = subprocess.run(["du", "-sb", str(root / rel)], capture_output=True, text=True, check=False).stdout
    return int(out.split()[0]) if out else 0


def _sizes(name: str) -> None:
    container = subprocess.run(["buildah", "from", "--pull-never", "--quiet", name], capture_output=True, text=True,
                               check=True).stdout.strip()  # fmt: skip
    try:
        mnt = Path(subprocess.run(["buildah", "mount", container], capture_output=True, text=True,
                                  check=True).stdout.strip())  # fmt: skip
        total = _du(mnt, ".")
        venv = _du(mnt, "opt/pcidevices")
        site = next((mnt / "opt/pcidevices/lib").glob("python3*/site-packages"))
        pyc = sum(p.stat().st_size for p in site.rglob("*.pyc"))
        packages = sorted(((_du(site, p.name), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:8]
        print(f"image {name}: {total / MiB:.0f} MiB uncompressed (target: at most 250 MiB)")
        print(f"  outside the virtual environment (the Debian base with Python, pci.ids, usb.ids, kmod, libudev1): "
              f"{(total - venv) / MiB:.0f} MiB")  # fmt: skip
        print(f"  virtual environment /opt/pcidevices: {venv / MiB:.0f} MiB, of which bytecode {pyc / MiB:.0f} MiB")
        for size, pkg in packages:
            print(f"    {pkg:28s} {size / MiB:6.1f} MiB")
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, check=False)
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-cold", action="store_true", help="only the warm and edit builds")
    parser.add_argument("--with-base", action="store_true", help="the cold build also makes the base image again")
    args = parser.parse_args()
    if shutil.which("buildah") is None:
        print("bench/image.py: buildah is missing (scripts/prepare-node installs it)", file=sys.stderr)
        return 2
    if args.with_base:
        cache = Path.home() / ".cache" / "pcidevices" / "image"
        for tar in cache.glob("base-*.tar"):
            tar.unlink()
        images = subprocess.run(["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"], capture_output=True,
                                text=True, check=True).stdout.split()  # fmt: skip
        for image in images:
            if image.startswith("localhost/pcidevices-base:"):
                subprocess.run(["buildah", "rmi", "--force", image], capture_output=True, check=False)
    if not args.skip_cold:
        print(f"cold build{' (with the base image)' if args.with_base else ''}: {_build('--no-cache'):.0f} s",
              flush=True)  # fmt: skip
    print(f"warm build (nothing changed): {_build():.0f} s", flush=True)
    marker = REPO / "nodeagent" / "__init__.py"
    original = marker.read_bytes()
    try:
        marker.write_bytes(original + b"\n# bench/image.py: a one-line change\n")
        print(f"build after a one-line change in nodeagent/: {_build():.0f} s", flush=True)
    finally:
        marker.write_bytes(original)
    _build()  # back to the archive of the committed sources
    _sizes(_image_name())
    return 0


if __name__ == "__main__":
    sys.exit(main())
