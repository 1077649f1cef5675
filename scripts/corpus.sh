#!/usr/bin/env bash
# The public playbook corpus (issue 14): the native runtime against ansible-core, task by task.
#
#   scripts/corpus.sh assemble            copy every entry's files into $DYNSERV_CORPUS
#   scripts/corpus.sh run [ENTRY...]      run every entry (or the named ones) in check mode
#                                         with both tools and compare them
#
# Each entry is a directory tests/fixtures/corpus/NN-topic/ with a PROVENANCE file:
# where the playbook comes from (repository, commit, licence), which files of that
# commit make the entry (`copy: SRC -> DEST`), the playbook to run and its extra
# variables. The playbooks themselves are not committed here (third-party code stays
# out of this repository); `assemble` copies them from local clones of the listed
# repositories, found as $CORPUS_MIRRORS/OWNER+NAME/repo (a bare or normal clone),
# else cloned from GitHub into that place.
#
# `run` needs root (for `unshare -n`: each tool runs in a network namespace with only
# loopback) and runs everything in check mode: a corpus playbook installs packages and
# edits /etc, so the host is never changed. Environment:
#   DYNSERV_CORPUS   where the assembled entries live (default /work/corpus)
#   AGENT            the dynserv-agent binary (default target/release/dynserv-agent,
#                    under $CARGO_TARGET_DIR when set)
#   ANSIBLE_PLAYBOOK ansible-playbook (default .venv-ansible/bin/ansible-playbook)
#   CORPUS_OUT       where each run's outputs are kept (default a new temporary directory)
#   CORPUS_NATIVE_ONLY=1  keep ansible-core's outputs already in CORPUS_OUT and run only
#                    the native runtime again (while fixing a mismatch)
#   CORPUS_FALLBACK=1  run the native runtime with --ansible-fallback (the modules it
#                    lacks run through ansible-core's `ansible`, as a server allowed to
#                    do so would); its outputs are kept as fallback.* beside native.*
set -euo pipefail
cd "$(dirname "$0")/.."
workspace=$(pwd)
fixtures="$workspace/tests/fixtures/corpus"
corpus=${DYNSERV_CORPUS:-/work/corpus}
mirrors=${CORPUS_MIRRORS:-/work/.mirror}

field() { sed -n "s/^$2: *//p" "$1" | head -n 1; }

assemble() {
    local provenance entry repo commit slug clone dest src target tmp
    for provenance in "$fixtures"/*/PROVENANCE; do
        entry=$(basename "$(dirname "$provenance")")
        repo=$(field "$provenance" repository)
        commit=$(field "$provenance" commit)
        slug=${repo#https://github.com/}
        clone="$mirrors/${slug/\//+}/repo"
        if ! git -C "$clone" cat-file -e "$commit^{commit}" 2>/dev/null; then
            mkdir -p "$(dirname "$clone")"
            git clone --quiet --bare "$repo" "$clone"
        fi
        dest="$corpus/$entry"
        rm -rf "$dest"
        mkdir -p "$dest"
        tmp=$(mktemp -d)
        while IFS= read -r line; do
            src=${line%% -> *}
            target=${line##* -> }
            # (git archive names blobs a partial clone lacks elsewhere in the tree on
            # stderr; the path asked for is complete or tar fails.)
            git -C "$clone" archive --format=tar "$commit" "$src" 2>/dev/null | tar -x -C "$tmp"
            mkdir -p "$(dirname "$dest/$target")"
            if [ "$target" = "." ]; then
                cp -a "$tmp/$src/." "$dest/"
            else
                cp -a "$tmp/$src" "$dest/$target"
            fi
        done < <(sed -n 's/^copy: *//p' "$provenance")
        rm -rf "$tmp"
        echo "$entry: $(find "$dest" -type f | wc -l) files from $slug@${commit:0:10}"
    done
}

run() {
    [ "$(id -u)" = 0 ] || { echo "corpus.sh run needs root (unshare -n)" >&2; exit 1; }
    local agent=${AGENT:-${CARGO_TARGET_DIR:-$workspace/target}/release/dynserv-agent}
    local ansible=${ANSIBLE_PLAYBOOK:-$workspace/.venv-ansible/bin/ansible-playbook}
    [ -x "$agent" ] || { echo "no dynserv-agent at $agent: cargo build --release -p dynserv-agent" >&2; exit 1; }
    [ -x "$ansible" ] || { echo "no ansible-playbook at $ansible: see tests/fixtures/playbooks/INSTALL.md" >&2; exit 1; }
    [ -d "$corpus" ] || { echo "no corpus at $corpus: scripts/corpus.sh assemble" >&2; exit 1; }
    local out=${CORPUS_OUT:-$(mktemp -d /tmp/corpus-run.XXXXXX)}
    mkdir -p "$out"
    local home="$out/ansible-home"
    mkdir -p "$home"
    local entries=("$@")
    if [ "${#entries[@]}" -eq 0 ]; then
        for provenance in "$fixtures"/*/PROVENANCE; do
            entries+=("$(basename "$(dirname "$provenance")")")
        done
    fi
    local entry provenance playbook extra dir args start end
    for entry in "${entries[@]}"; do
        provenance="$fixtures/$entry/PROVENANCE"
        playbook=$(field "$provenance" playbook)
        extra=$(field "$provenance" extra_vars)
        dir="$corpus/$entry"
        args=(-i "$fixtures/inventory.ini" --check)
        [ -n "$extra" ] && args+=(-e "$extra")
        mkdir -p "$out/$entry"
        # ansible-core: its own configuration, no colours, the system Python for modules
        # (python3-apt lives there), temporary files under the run's directory.
        if [ "${CORPUS_NATIVE_ONLY:-}" != 1 ] || [ ! -f "$out/$entry/ansible.out" ]; then
        start=$(date +%s%N)
        (cd "$dir" && unshare -n env \
            ANSIBLE_CONFIG="$home/none.cfg" ANSIBLE_HOME="$home/ansible" \
            ANSIBLE_LOCAL_TEMP="$home/local-tmp" ANSIBLE_REMOTE_TEMP="$home/remote-tmp" \
            ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_DEPRECATION_WARNINGS=0 \
            ANSIBLE_LOCALHOST_WARNING=0 ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3 \
            ANSIBLE_FORCE_HANDLERS=0 \
            "$ansible" "${args[@]}" "$playbook" >"$out/$entry/ansible.out" 2>&1) &&
            echo 0 >"$out/$entry/ansible.rc" || echo $? >"$out/$entry/ansible.rc"
        end=$(date +%s%N)
        echo $(((end - start) / 1000000)) >"$out/$entry/ansible.ms"
        fi
        local native=(playbook) tag=native
        if [ "${CORPUS_FALLBACK:-}" = 1 ]; then
            native+=(--ansible-fallback="$(dirname "$ansible")/ansible")
            tag=fallback
        fi
        start=$(date +%s%N)
        (cd "$dir" && unshare -n env ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3 \
            ANSIBLE_NOCOLOR=1 ANSIBLE_LOCALHOST_WARNING=0 \
            "$agent" "${native[@]}" "${args[@]}" "$playbook" \
            >"$out/$entry/$tag.out" 2>&1) &&
            echo 0 >"$out/$entry/$tag.rc" || echo $? >"$out/$entry/$tag.rc"
        end=$(date +%s%N)
        echo $(((end - start) / 1000000)) >"$out/$entry/$tag.ms"
        echo "ran $entry" >&2
    done
    CORPUS_TAG=$([ "${CORPUS_FALLBACK:-}" = 1 ] && echo fallback || echo native) \
        python3 "$workspace/scripts/corpus_compare.py" "$out" "${entries[@]}"
    echo "outputs kept in $out"
}

case "${1:-}" in
assemble) assemble ;;
run) shift; run "$@" ;;
*) echo "usage: scripts/corpus.sh assemble | run [ENTRY...]" >&2; exit 1 ;;
esac
