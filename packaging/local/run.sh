#!/usr/bin/env bash
# Run the whole Dragonfly system on this machine, for development and for trying it out.
#
#   sudo packaging/local/run.sh                            # or as a normal user
#   DRAGONFLY_LISTEN=127.0.0.1:8080 packaging/local/run.sh  # apid elsewhere than 127.0.0.1:3000
#
# Installs what it needs (Debian 12), builds the release binaries, starts a private nats-server
# on 127.0.0.1:14222 (a port of our own: a system nats-server keeps 4222), creates or migrates
# the database, starts dragonfly-apid, waits until it is healthy, and prints how to create the
# first administrator. It then follows the logs; Ctrl-C (or SIGTERM) stops everything it
# started and exits 0.
#
# State lives in ./var (git-ignored): dragonfly.toml (rewritten on every start; edit this
# script, not the file), dragonfly.db, credentials/boot-token-key (made once: replacing it
# invalidates outstanding agent tokens), and log/<process>.log.
#
# The daemons refuse to run as root. As root, this script runs every process as the system
# user "dragonfly" (created when missing). When that user cannot reach this checkout (one under
# /root, say), the binaries are copied to /var/lib/dragonfly-local/bin and ./var becomes a
# link to /var/lib/dragonfly-local. As a normal user, everything runs as that user.
#
# Nothing here answers on the host's network: apid listens on loopback unless told otherwise,
# and no DHCP, TFTP or iPXE server is started (those daemons do not exist yet). When they do,
# they run only inside a private lab network namespace, never on the host's real network,
# where a stray DHCP server would hand out addresses to every machine on the segment.
set -euo pipefail

if [ $# -gt 0 ]; then
    sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "${BASH_SOURCE[0]}"
    case $1 in -h | --help) exit 0 ;; *) exit 2 ;; esac
fi

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD

readonly nats_port=14222
readonly daemon_user=dragonfly
readonly relocated_state=/var/lib/dragonfly-local
listen=${DRAGONFLY_LISTEN:-127.0.0.1:3000}

# Whatever systemd or a parent gave this shell is not for our children: logs go to files
# here, not the journal, and no socket or credential is passed down.
unset JOURNAL_STREAM NOTIFY_SOCKET LISTEN_PID LISTEN_FDS LISTEN_FDNAMES CREDENTIALS_DIRECTORY \
    WATCHDOG_USEC WATCHDOG_PID RUST_LOG

die() { echo "$0: $*" >&2; exit 1; }
die_install() { printf '%s\n' "$@" >&2; exit 2; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# --- What it needs --------------------------------------------------------------------------
# nats-server (Debian's), util-linux (setpriv, setsid), curl (health check), gcc and libc6-dev
# (C parts of crates).
missing=()
for pkg in nats-server util-linux curl gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
        missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    is_root || die_install "$0: missing Debian packages: ${missing[*]}" \
        "install them as root (apt-get install -y ${missing[*]}), or run this script with sudo"
    echo "==> installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
    if [[ " ${missing[*]} " == *" nats-server "* ]]; then
        # Debian's package enables and starts its own server on :4222 where systemd runs; we
        # start our own on 14222, so switch that one off again.
        if [ -d /run/systemd/system ]; then
            systemctl disable --now nats-server.service >/dev/null 2>&1 || true
        fi
        service nats-server stop >/dev/null 2>&1 || true
    fi
fi
nats_server=/usr/sbin/nats-server

if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH=$HOME/.cargo/bin:$PATH
fi
if ! command -v cargo >/dev/null; then
    msg=("$0: cargo not found. Install Rust with rustup (https://rustup.rs) for this user:"
        "    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain none"
        "    . \"\$HOME/.cargo/env\" && rustup toolchain install   # in this repository: reads rust-toolchain.toml"
        "then run this script again.")
    if [ -n "${SUDO_USER:-}" ]; then
        msg+=("(Under sudo, cargo must be root's: sudo keeps neither your PATH nor your ~/.rustup.)")
    fi
    die_install "${msg[@]}"
fi

# Where apid is reached for the health check and the printed URL: a wildcard address is
# reached on loopback.
listen_host=${listen%:*}
listen_port=${listen##*:}
if [ "$listen_host" = "$listen" ] || [ -z "$listen_host" ] || ! [[ $listen_port =~ ^[0-9]+$ ]]; then
    die "DRAGONFLY_LISTEN=$listen: expected IP:PORT, e.g. 127.0.0.1:3000 or [::1]:3000"
fi
listen_host=${listen_host#[}
listen_host=${listen_host%]}
case $listen_host in
    0.0.0.0) probe_host=127.0.0.1 ;;
    ::) probe_host=::1 ;;
    *) probe_host=$listen_host ;;
esac
if [[ $probe_host == *:* ]]; then url="http://[$probe_host]:$listen_port"; else url="http://$probe_host:$listen_port"; fi

port_in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
port_in_use 127.0.0.1 "$nats_port" &&
    die "127.0.0.1:$nats_port is taken (another run of this script still going?)"
port_in_use "$probe_host" "$listen_port" &&
    die "$listen is taken (another run of this script still going? or set DRAGONFLY_LISTEN)"

# --- Build ----------------------------------------------------------------------------------
echo "==> cargo build --release --locked --bins"
cargo build --release --locked --bins
bin=$repo/target/release

# --- Who runs the daemons, and where their state is -----------------------------------------
as_daemon=()
if is_root; then
    if ! getent group "$daemon_user" >/dev/null; then
        groupadd --system "$daemon_user"
    fi
    if ! getent passwd "$daemon_user" >/dev/null; then
        useradd --system --gid "$daemon_user" --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "Dragonfly local run" "$daemon_user"
        echo "==> created system user $daemon_user"
    fi
    as_daemon=(setpriv --reuid="$daemon_user" --regid="$daemon_user" --init-groups --)
    if ! "${as_daemon[@]}" test -x "$bin/dragonfly-apid"; then
        # The checkout is out of the daemon user's reach: run from a copy it can reach.
        if [ -L var ]; then
            [ "$(readlink -f var)" = "$relocated_state" ] ||
                die "./var links to $(readlink -f var), not $relocated_state; move it away and run again"
        elif [ -e var ]; then
            die "user $daemon_user cannot reach $repo, so state must move to $relocated_state;" \
                "./var already exists: move it away (mv var var.old) and run again"
        else
            install -d -m 0750 "$relocated_state"
            ln -s "$relocated_state" var
        fi
        install -d -m 0755 -o root -g root "$relocated_state/bin"
        install -m 0755 -o root -g root "$bin/dragonfly-apid" "$bin/dragonfly-migrate" \
            "$relocated_state/bin/"
        bin=$relocated_state/bin
        echo "==> user $daemon_user cannot reach $repo: running binaries from $bin;" \
            "./var links to $relocated_state"
    fi
fi

mkdir -p var
state=$(readlink -f var)
install -d "$state/log"
install -d -m 0700 "$state/credentials"
key=$state/credentials/boot-token-key
if [ ! -s "$key" ]; then
    (umask 077 && head -c 32 /dev/urandom >"$key.tmp" && mv "$key.tmp" "$key")
    echo "==> generated $key"
fi
chmod 0600 "$key"

config=$state/dragonfly.toml
cat >"$config" <<EOF
# Written by packaging/local/run.sh on every start: edit the script, not this file.
# Format and defaults: packaging/dragonfly.toml.example.

[store]
path = "$state/dragonfly.db"

[nats]
# The script's own nats-server, on a port of its own so it never meets a system one on 4222.
url = "nats://127.0.0.1:$nats_port"

[log]
level = "info"

[apid]
listen = "$listen"
boot_token_key_file = "$key"
# The local run serves plain HTTP, and clients may drop a session cookie marked Secure there
# (it is meant only for HTTPS). Keep the default (true) wherever apid is reached over HTTPS.
secure_cookies = false
EOF
chmod 0644 "$config"

if is_root; then
    chmod 0750 "$state"
    # Everything in the state directory is the daemon user's, except the binaries' copy and
    # the configuration, which the daemons only read.
    find "$state" -path "$state/bin" -prune -o ! -path "$config" \
        -exec chown -h "$daemon_user:$daemon_user" {} +
    chown root:root "$config"
    "${as_daemon[@]}" test -w "$state" || die "user $daemon_user cannot write $state"
else
    [ -w "$state" ] || die "$state is not writable by $(id -un) (left by a run as root?)"
fi

# --- Start, and stop on the way out ---------------------------------------------------------
names=()
pids=()
follower=

alive() { # PID: running, not a zombie
    local stat
    stat=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $stat != Z* ]]
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$? i pid n
    trap '' INT TERM
    [ -z "$follower" ] || { kill "$follower" 2>/dev/null || true; wait "$follower" 2>/dev/null || true; }
    # Newest first: apid before the nats-server it publishes to.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            for ((n = 0; n < 150; n++)); do alive "$pid" || break; sleep 0.1; done
            if alive "$pid"; then
                echo "${names[i]} did not stop within 15 s: killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        wait "$pid" 2>/dev/null || true
        echo "==> stopped ${names[i]} (pid $pid)"
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "==> stopping"; exit 0' INT TERM

# start NAME COMMAND…: in the background as the daemon user, output appended to var/log/NAME.log.
# setsid puts it in its own session, so a Ctrl-C reaches only this script, which then stops
# the processes in order. Neither setsid (not a group leader here) nor setpriv forks, so $! is
# the process itself.
start() {
    local name=$1 log=$state/log/$1.log
    shift
    echo "---- $(date -Is) $*" >>"$log"
    setsid "${as_daemon[@]}" "$@" </dev/null >>"$log" 2>&1 &
    names+=("$name")
    pids+=("$!")
}

fail_with_log() { # NAME MESSAGE
    echo "$0: $2; the end of $state/log/$1.log:" >&2
    tail -n 30 "$state/log/$1.log" >&2
    exit 1
}

echo "==> starting nats-server on 127.0.0.1:$nats_port"
start nats-server "$nats_server" -a 127.0.0.1 -p "$nats_port"
for ((n = 0; n < 100; n++)); do
    port_in_use 127.0.0.1 "$nats_port" && break
    alive "${pids[-1]}" || fail_with_log nats-server "nats-server exited"
    sleep 0.1
done
port_in_use 127.0.0.1 "$nats_port" || fail_with_log nats-server "nats-server not listening after 10 s"

echo "==> dragonfly-migrate"
echo "---- $(date -Is) dragonfly-migrate" >>"$state/log/migrate.log"
"${as_daemon[@]}" "$bin/dragonfly-migrate" --config "$config" </dev/null \
    >>"$state/log/migrate.log" 2>&1 || fail_with_log migrate "dragonfly-migrate failed"

echo "==> starting dragonfly-apid on $listen"
start apid "$bin/dragonfly-apid" --config "$config"
for ((n = 0; n < 300; n++)); do
    curl -fsS -o /dev/null "$url/api/health" 2>/dev/null && break
    alive "${pids[-1]}" || fail_with_log apid "dragonfly-apid exited"
    sleep 0.1
done
curl -fsS -o /dev/null "$url/api/health" || fail_with_log apid "dragonfly-apid not healthy after 30 s"

sudo=
[ -z "${SUDO_USER:-}" ] || sudo="sudo "
cat <<EOF

Dragonfly is running: $url/  (health: $url/api/health)
  state  $state  (database, config, boot-token key)
  logs   $state/log/{nats-server,migrate,apid}.log

Create the first administrator: run this in another terminal, then type a password of at
least 12 characters, Enter, and Ctrl-D (it reads the password from standard input):

  $sudo${as_daemon[*]}${as_daemon[*]:+ }$bin/dragonfly-apid --config $config create-admin --username admin

then log in at $url/ (README.md shows the same with curl).
No DHCP, TFTP or iPXE server runs: later they run only inside a private lab network namespace.
Ctrl-C stops everything. Following the logs:

EOF

# Relative names, so tail's "==> var/log/apid.log <==" headers stay short.
tail -n 0 -F var/log/nats-server.log var/log/apid.log &
follower=$!

# Until a signal (the trap exits 0) or until a process dies on its own (an error).
wait -n "${pids[@]}" || true
for i in "${!pids[@]}"; do
    alive "${pids[i]}" || fail_with_log "${names[i]}" "${names[i]} exited on its own"
done
die "a process exited unexpectedly"
