#!/usr/bin/env bash
# Install the Debian package built by `cargo xtask package`, check that what it installed works, then
# remove and purge it and check that it is gone. Root only (dpkg); CI runs it after `cargo xtask test`.
#
#   dist/deb/check.sh target/debian/vigil_0.1.0-1_amd64.deb
#
# Checks: the installed /usr/bin/vigil runs; every example policy in /usr/share/vigil/policies loads
# (`vigil policy check`) with its plugin found in /usr/lib/vigil/plugins (the sha256 the check prints is
# the installed file's), and replays its golden scenarios from tests/scenarios/ (`vigil policy test`);
# no test plugin is shipped; /etc/vigil is root:root 0750; the man pages and completions are in place;
# the unit passes `systemd-analyze verify` (skipped, with the reason, where that tool is missing).
# Then `dpkg -r` removes every file, and `dpkg --purge` keeps an /etc/vigil that still holds a key and
# removes an empty one (a second install and purge).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

deb=${1:?usage: dist/deb/check.sh PATH/TO/vigil_VERSION_ARCH.deb}
[ -f "$deb" ] || { echo "check.sh: $deb: no such file" >&2; exit 2; }
deb=$(realpath "$deb")
[ "$(id -u)" = 0 ] || { echo "check.sh: dpkg -i needs root" >&2; exit 2; }
if dpkg-query -W -f='${Status}' vigil 2>/dev/null | grep -q ' installed$'; then
    echo "check.sh: a vigil package is already installed here; not touching it (dpkg --purge vigil first)" >&2
    exit 2
fi
etc_existed=no
[ -e /etc/vigil ] && etc_existed=yes

step() { printf '\n== %s\n' "$*"; }
fail() { echo "check.sh: FAIL: $*" >&2; exit 1; }
installed=no
cleanup() {
    if [ "$installed" = yes ]; then
        echo "check.sh: purging the package after a failure" >&2
        dpkg --purge vigil >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

# Only the installed files count: no plugin directory from the environment, nothing from this checkout.
unset VIGIL_PLUGIN_DIR
vigil=/usr/bin/vigil

step "dpkg -i $(basename "$deb")"
dpkg -i "$deb"
installed=yes
dpkg -s vigil | sed -n '/^Package/p;/^Version/p;/^Depends/p;/^Suggests/p'

step "the installed binary"
version=$(dpkg-query -W -f='${Version}' vigil)
out=$(cd / && "$vigil" --version)
echo "$out"
[ "$out" = "vigil ${version%-*}" ] || fail "vigil --version says '$out', the package is $version"

step "the installed plugins"
ls -l /usr/lib/vigil/plugins
for test_only in testkit wrong-world policy-v0-1; do
    [ ! -e "/usr/lib/vigil/plugins/$test_only.wasm" ] || fail "test plugin $test_only.wasm is shipped"
done

step "vigil policy check on every installed example policy"
policies=(/usr/share/vigil/policies/*.toml)
[ ${#policies[@]} -gt 0 ] && [ -f "${policies[0]}" ] || fail "no policy in /usr/share/vigil/policies"
for policy in "${policies[@]}"; do
    out=$(cd / && "$vigil" policy check "$policy") || fail "vigil policy check $policy"
    echo "$out"
    name=$(sed -n 's/^plugin *= *"\(.*\)"/\1/p' "$policy")
    sum=$(sha256sum "/usr/lib/vigil/plugins/$name.wasm" | cut -c1-16)
    case "$out" in *"sha256 $sum"*) ;; *) fail "$policy: not loaded from /usr/lib/vigil/plugins/$name.wasm (sha256 $sum)" ;; esac
done

step "vigil policy test: the installed policies replay their golden scenarios"
tested=0
for policy in "${policies[@]}"; do
    scenarios=("$repo/tests/scenarios/$(basename "$policy" .toml)"/*.toml)
    [ -f "${scenarios[0]}" ] || continue
    out=$(cd / && "$vigil" policy test "$policy" "${scenarios[@]}") || { echo "$out"; fail "vigil policy test $policy"; }
    echo "$(basename "$policy"): $(tail -n 1 <<<"$out")"
    tested=$((tested + 1))
done
[ "$tested" -gt 0 ] || fail "no installed policy has scenarios in tests/scenarios"

step "/etc/vigil"
perms=$(stat -c '%a %U:%G' /etc/vigil)
echo "/etc/vigil: $perms"
if [ "$etc_existed" = yes ]; then
    echo "(existed before the install: left as it was, mode not checked)"
else
    [ "$perms" = "750 root:root" ] || fail "/etc/vigil is $perms, expected 750 root:root"
fi

step "man pages and completions"
if command -v man >/dev/null 2>&1; then
    man -w vigil
    man -w vigil-policy-check
else
    echo "man not installed: checking the files only"
fi
for f in /usr/share/man/man1/vigil.1.gz /usr/share/man/man1/vigil-policy-check.1.gz \
         /usr/share/bash-completion/completions/vigil /usr/share/zsh/vendor-completions/_vigil \
         /usr/share/fish/vendor_completions.d/vigil.fish; do
    [ -s "$f" ] || fail "$f missing (a dpkg path-exclude for man pages would also cause this: /etc/dpkg/dpkg.cfg.d/)"
    echo "present: $f"
done
bash -n /usr/share/bash-completion/completions/vigil || fail "the bash completion does not parse"
# The bash completion completes subcommands.
words=$(bash -c 'source /usr/share/bash-completion/completions/vigil; COMP_WORDS=(vigil pol); COMP_CWORD=1; _vigil vigil pol vigil; echo "${COMPREPLY[*]}"')
[ "$words" = "policy" ] || fail "bash completion of 'vigil pol' gave '$words'"
echo "bash: vigil pol<TAB> → $words"

step "the systemd unit"
unit=/usr/lib/systemd/system/vigil.service
grep -q '^ExecStart=/usr/bin/vigil ' "$unit" || fail "$unit does not run /usr/bin/vigil"
if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze verify "$unit"
    echo "systemd-analyze verify $unit: ok"
else
    echo "systemd-analyze not installed (package systemd): unit not verified"
fi

step "dpkg -r vigil"
dpkg -r vigil
for f in "$vigil" /usr/lib/vigil /usr/share/vigil "$unit" /usr/share/man/man1/vigil.1.gz \
         /usr/share/bash-completion/completions/vigil; do
    [ ! -e "$f" ] || fail "$f still there after dpkg -r"
done
echo "binary, plugins, policies, unit, man pages and completions removed"
[ "$etc_existed" = yes ] || [ -d /etc/vigil ] || fail "dpkg -r removed /etc/vigil (only a purge may)"

step "dpkg --purge vigil"
if [ "$etc_existed" = no ]; then
    # An operator's key survives a purge...
    echo "not-a-real-key" > /etc/vigil/peer.key
    dpkg --purge vigil
    installed=no
    [ -f /etc/vigil/peer.key ] || fail "dpkg --purge removed a key in /etc/vigil"
    rm /etc/vigil/peer.key
    rmdir /etc/vigil
    echo "/etc/vigil holding a key: kept (then removed by this check)"
    # ...and an empty /etc/vigil goes with the package.
    step "dpkg -i, then dpkg --purge with an empty /etc/vigil"
    dpkg -i "$deb" >/dev/null
    installed=yes
    dpkg --purge vigil
    installed=no
    [ ! -e /etc/vigil ] || fail "dpkg --purge left an empty /etc/vigil"
    echo "/etc/vigil removed"
else
    dpkg --purge vigil
    installed=no
fi
! dpkg-query -W -f='${Status}' vigil 2>/dev/null | grep -q ' installed$' || fail "vigil still installed"
[ ! -e "$vigil" ] && [ ! -e /usr/lib/vigil ] || fail "files left after the purge"
echo
echo "check.sh: ok: installed, ran, removed and purged $(basename "$deb")"
