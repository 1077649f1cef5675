#!/usr/bin/env bash
# Refreshes web/static/vendor/ from PyPI's XStatic packages.
#
# The product embeds these files and must work offline, so they are committed; this
# script is only run by a person who wants to move to another upstream version. Change
# the versions below, run it from anywhere, review `git diff --stat web/static/vendor`,
# and commit the result together with the updated README.md in that folder.
#
# Usage: packaging/vendor-assets.sh
set -euo pipefail

BOOTSTRAP_VERSION="5.3.8"          # xstatic-bootstrap 5.3.8 (sdist), Bootstrap 5.3.8
FONT_AWESOME_VERSION="6.2.1.2"     # xstatic-font-awesome 6.2.1.2 (wheel), Font Awesome Free 6.2.1

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vendor="$repo_root/web/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# xstatic-bootstrap is published as a source archive whose setup.py only builds with an
# older setuptools; pip resolves the build backend through the constraint file.
echo 'setuptools<70' >"$work/constraints.txt"
export PIP_CONSTRAINT="$work/constraints.txt"

pip download --no-deps --dest "$work/dl" "xstatic-bootstrap==$BOOTSTRAP_VERSION"
pip download --no-deps --dest "$work/dl" "xstatic-font-awesome==$FONT_AWESOME_VERSION"

mkdir -p "$work/unpacked"
for archive in "$work"/dl/*; do
    case "$archive" in
        *.tar.gz) tar -xzf "$archive" -C "$work/unpacked" ;;
        *.whl | *.zip) python3 -m zipfile -e "$archive" "$work/unpacked/$(basename "$archive" .whl)" ;;
        *) echo "vendor-assets: unexpected download $archive" >&2; exit 1 ;;
    esac
done

bootstrap_data="$(find "$work/unpacked" -type d -path '*xstatic/pkg/bootstrap/data' | head -n1)"
font_awesome_data="$(find "$work/unpacked" -type d -path '*xstatic/pkg/font_awesome/data' | head -n1)"
[ -n "$bootstrap_data" ] || { echo "vendor-assets: no bootstrap data in the download" >&2; exit 1; }
[ -n "$font_awesome_data" ] || { echo "vendor-assets: no font awesome data in the download" >&2; exit 1; }

rm -rf "$vendor/bootstrap" "$vendor/fontawesome"
mkdir -p "$vendor/bootstrap" "$vendor/fontawesome/css" "$vendor/fontawesome/webfonts"

cp "$bootstrap_data/css/bootstrap.min.css" "$vendor/bootstrap/"
cp "$bootstrap_data/js/bootstrap.bundle.min.js" "$vendor/bootstrap/"

# The XStatic archive ships no license file of its own; Bootstrap's files name the MIT
# license and their copyright holder in their header, so write that license beside them.
copyright_years="$(grep -o 'Copyright 20[0-9-]* The Bootstrap Authors' "$vendor/bootstrap/bootstrap.min.css" | head -n1 | awk '{print $2}')"
[ -n "$copyright_years" ] || { echo "vendor-assets: bootstrap.min.css has no copyright header" >&2; exit 1; }
cat >"$vendor/bootstrap/LICENSE" <<EOF
The MIT License (MIT)

Copyright (c) $copyright_years The Bootstrap Authors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
THE SOFTWARE.
EOF

cp "$font_awesome_data/css/all.min.css" "$vendor/fontawesome/css/"
cp "$font_awesome_data/LICENSE.txt" "$vendor/fontawesome/LICENSE.txt"
# Copy exactly the font files that all.min.css references (../webfonts/NAME).
grep -o 'url(\.\./webfonts/[^)]*)' "$vendor/fontawesome/css/all.min.css" \
    | sed -e 's|url(\.\./webfonts/||' -e 's|)$||' | sort -u \
    | while read -r font; do
        cp "$font_awesome_data/webfonts/$font" "$vendor/fontawesome/webfonts/$font"
    done

echo "vendor-assets: refreshed $vendor"
(cd "$vendor" && find . -type f ! -name README.md | sort | xargs sha256sum)
