#!/usr/bin/env bash
# Installs what the build, the demo and the tests need on Debian 12, idempotently, as root.
# Usage: scripts/deps.sh [build|agents|qemu|watchdog|haproxy|zabbix|trixie|proxy|deb|debroot|libvirt11|all]...
# Agent binaries go to $KVM_CACHE (default /var/cache/zabbix-agent2-plugin-kvm), outside the repo,
# so that 6.0 and 7.0 run side by side.
set -euo pipefail
CACHE=${KVM_CACHE:-/var/cache/zabbix-agent2-plugin-kvm}
AGENT60=1:6.0.14+dfsg-1+b1
export DEBIAN_FRONTEND=noninteractive

log() { printf 'deps: %s\n' "$*" >&2; }

need_root() { [ "$(id -u)" = 0 ] || { log "must run as root (apt-get, dpkg)"; exit 1; }; }

# Package postinst scripts must never start daemons here (no systemd; sysv scripts would grab ports).
no_daemons() { [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }; }

# The machine's own Debian mirror (never a hard-coded host).
mirror() {
  local m
  m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$m" ] || { log "cannot find the Debian mirror in /etc/apt/sources.list*"; exit 1; }
  echo "$m"
}

# bookworm-backports, on the same mirror as the machine's own Debian sources.
backports() {
  local f=/etc/apt/sources.list.d/bookworm-backports.sources mirror
  [ -e "$f" ] && return 0
  mirror=$(mirror)
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" >"$f"
  UPDATED=
}

UPDATED=
apt_update() { [ -n "$UPDATED" ] || { log "apt-get update"; apt-get update -qq; UPDATED=1; }; }

# install PKG... : only the missing ones, so a warm machine costs one dpkg-query.
install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "${p%%=*}" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_update
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${EXTRA[@]}" "${missing[@]}" >/dev/null
}
EXTRA=()

build() { install gcc make pkg-config libvirt-dev libvirt-clients libvirt-daemon iproute2 curl; }

# agent DIR VERSION [apt-target]: unpack one zabbix-agent2 version into $CACHE/DIR.
agent() {
  local dir=$CACHE/$1 ver=$2 tmp
  [ -x "$dir/usr/sbin/zabbix_agent2" ] && return 0
  apt_update
  tmp=$(mktemp -d); chmod 755 "$tmp"; mkdir -p "$dir"
  log "fetching zabbix-agent2 $ver"
  (cd "$tmp" && apt-get download -qq "zabbix-agent2=$ver" && dpkg -x zabbix-agent2_*.deb "$dir")
  rm -rf "$tmp"
}

agents() {
  # both unpacked and linked: nothing to fetch, so no apt-get update (it costs ~30 s on every make demo)
  if [ -x "$CACHE/zabbix_agent2-6.0" ] && [ -x "$CACHE/zabbix_agent2-7.0" ]; then
    install libpcre2-8-0 libssl3 zlib1g
    return 0
  fi
  backports; apt_update
  agent agent-6.0 "$AGENT60"
  local v70
  v70=$(apt-cache madison zabbix-agent2 | awk -F'|' '/bookworm-backports/{gsub(/ /,"",$2); print $2; exit}')
  [ -n "$v70" ] || { log "no zabbix-agent2 in bookworm-backports"; exit 1; }
  agent agent-7.0 "$v70"
  # the agents link against these at run time
  install libpcre2-8-0 libssl3 zlib1g
  ln -sfn "$CACHE/agent-6.0/usr/sbin/zabbix_agent2" "$CACHE/zabbix_agent2-6.0"
  ln -sfn "$CACHE/agent-7.0/usr/sbin/zabbix_agent2" "$CACHE/zabbix_agent2-7.0"
}

qemu() {
  install libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils \
    busybox-static qemu-guest-agent dnsmasq-base iproute2 cpio gzip curl
  local kdeb
  if ! ls "$CACHE"/kernel/vmlinuz >/dev/null 2>&1; then
    apt_update
    kdeb=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
    mkdir -p "$CACHE/kernel"; local tmp; tmp=$(mktemp -d)
    log "fetching $kdeb"
    (cd "$tmp" && apt-get download -qq "$kdeb" && dpkg -x "$kdeb"_*.deb x)
    cp "$tmp"/x/boot/vmlinuz-* "$CACHE/kernel/vmlinuz"
    rm -rf "$CACHE/kernel/modules"; cp -a "$tmp"/x/lib/modules/* "$CACHE/kernel/modules"
    rm -rf "$tmp"
  fi
}

# The standard flavour of the cloud kernel's version, for the lab's watchdog guests only (tests/lab
# GuestOpts.Watchdog): the cloud flavour has no i6300esb driver, so its guests cannot arm QEMU's
# watchdog. A module loads only into the flavour it was built for, hence the whole kernel.
watchdog() {
  qemu
  if ! ls "$CACHE"/kernel-watchdog/vmlinuz >/dev/null 2>&1; then
    apt_update
    local kdeb; kdeb=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
    kdeb=${kdeb%-cloud-amd64}-amd64
    mkdir -p "$CACHE/kernel-watchdog"; local tmp; tmp=$(mktemp -d)
    log "fetching $kdeb"
    (cd "$tmp" && apt-get download -qq "$kdeb" && dpkg -x "$kdeb"_*.deb x)
    [ -n "$(find "$tmp"/x/lib/modules -name i6300esb.ko)" ] || { log "$kdeb has no i6300esb.ko"; exit 1; }
    rm -rf "$CACHE/kernel-watchdog/modules"; cp -a "$tmp"/x/lib/modules/* "$CACHE/kernel-watchdog/modules"
    cp "$tmp"/x/boot/vmlinuz-* "$CACHE/kernel-watchdog/vmlinuz"
    rm -rf "$tmp"
  fi
}

haproxy() { install haproxy socat; }

zabbix() {
  no_daemons; backports; apt_update
  EXTRA=(-t bookworm-backports)
  install postgresql zabbix-server-pgsql zabbix-frontend-php zabbix-sender php8.2-cli php8.2-cgi php8.2-pgsql
  EXTRA=()
  # README's trial (tests/tryit) talks to the API with curl and jq, Debian 12's own
  install jq
  # the 6.0 server, unpacked beside the installed 7.0, for the template-import check
  local dir=$CACHE/server-6.0
  if [ ! -x "$dir/usr/sbin/zabbix_server" ]; then
    local tmp; tmp=$(mktemp -d); chmod 755 "$tmp"; mkdir -p "$dir"
    log "fetching zabbix-server-pgsql and zabbix-frontend-php 6.0.14"
    (cd "$tmp" && apt-get download -qq zabbix-server-pgsql=1:6.0.14+dfsg-1+b1 zabbix-frontend-php=1:6.0.14+dfsg-1 &&
      for d in *.deb; do dpkg -x "$d" "$dir"; done)
    rm -rf "$tmp"
  fi
}

# root SUITE [NAME]: a minimal Debian root of SUITE in $CACHE/root/NAME (default SUITE), made by
# debootstrap from the machine's mirror (bookworm gets bookworm-backports beside it). Tests never
# change it: they run its programs through its own loader (tests/chroot) or overlay it for a throwaway
# install.
root() {
  local suite=$1 dir=$CACHE/root/${2:-$1} m
  [ -e "$dir/.complete" ] && return 0
  install debootstrap
  m=$(mirror)
  mkdir -p "$CACHE/root"; rm -rf "$dir.tmp"
  log "debootstrap $suite (a few minutes)"
  debootstrap --variant=minbase "$suite" "$dir.tmp" "$m" >"$dir.log" 2>&1 ||
    { log "debootstrap $suite failed: see $dir.log"; exit 1; }
  [ "$suite" != bookworm ] || echo "deb $m bookworm-backports main" >"$dir.tmp/etc/apt/sources.list.d/backports.list"
  printf '#!/bin/sh\nexit 101\n' >"$dir.tmp/usr/sbin/policy-rc.d"; chmod +x "$dir.tmp/usr/sbin/policy-rc.d"
  chroot "$dir.tmp" apt-get update -qq
  rm -rf "$dir"; mv "$dir.tmp" "$dir"; touch "$dir/.complete"
}

# in_root SUITE apt-get ARGS...: apt inside a root made by root().
in_root() {
  local dir=$CACHE/root/$1; shift
  chroot "$dir" env DEBIAN_FRONTEND=noninteractive "$@"
}

# trixie: haproxy 3.0 and zabbix-agent2 7.0.22 (the compatibility matrix; Debian 12 has neither).
trixie() {
  root trixie
  [ -x "$CACHE/root/trixie/usr/sbin/haproxy" ] && [ -x "$CACHE/root/trixie/usr/sbin/zabbix_agent2" ] && return 0
  log "installing haproxy and zabbix-agent2 in the trixie root"
  # apt in a root without /dev/pts and init complains on stderr about both: keep it in a log
  in_root trixie apt-get install -y -qq --no-install-recommends haproxy zabbix-agent2 >"$CACHE/root/trixie-install.log" 2>&1 ||
    { tail -20 "$CACHE/root/trixie-install.log" >&2; exit 1; }
}

# proxy: zabbix_proxy 7.0 (SQLite) unpacked in $CACHE/proxy-7.0, for the fleet's proxy group; its
# libraries are the server's, plus SQLite's.
proxy() {
  zabbix
  install libsqlite3-0 sqlite3
  local dir=$CACHE/proxy-7.0
  [ -x "$dir/usr/sbin/zabbix_proxy" ] && return 0
  local v tmp
  v=$(apt-cache madison zabbix-proxy-sqlite3 | awk -F'|' '/bookworm-backports/{gsub(/ /,"",$2); print $2; exit}')
  [ -n "$v" ] || { log "no zabbix-proxy-sqlite3 in bookworm-backports"; exit 1; }
  tmp=$(mktemp -d); chmod 755 "$tmp"; mkdir -p "$dir"
  log "fetching zabbix-proxy-sqlite3 $v"
  (cd "$tmp" && apt-get download -qq "zabbix-proxy-sqlite3=$v" && dpkg -x zabbix-proxy-sqlite3_*.deb "$dir")
  rm -rf "$tmp"
}

# deb: what `make deb` needs beside the build: dpkg-shlibdeps and lintian.
deb() { install dpkg-dev lintian; }

# debroot: the package's install test (tests/deb) overlays this bookworm root, a root of its own so
# that no other target's installs change what "a fresh Debian 12" means there, and installs offline
# from its apt cache (downloaded here, since tests never dial out): zabbix-agent2 6.0 (bookworm) and
# 7.0 (bookworm-backports) and libvirt0, each with its dependencies and recommendations (what apt
# installs for a user).
debroot() {
  local dir=$CACHE/root/deb-bookworm
  root bookworm deb-bookworm
  [ -e "$dir/.apt-cache-complete" ] && return 0
  log "downloading zabbix-agent2 6.0 and 7.0 and libvirt0 into the deb-bookworm root's apt cache"
  { in_root deb-bookworm apt-get install -y -qq --download-only zabbix-agent2 libvirt0 &&
    in_root deb-bookworm apt-get install -y -qq --download-only -t bookworm-backports zabbix-agent2; } \
    >"$dir.download.log" 2>&1 || { tail -20 "$dir.download.log" >&2; exit 1; }
  touch "$dir/.apt-cache-complete"
}

# libvirt11: libvirt 11.3 and QEMU 10.0 from bookworm-backports in the bookworm root (the compatibility
# matrix's libvirt cell). The plugin is built against its libvirt-dev, and tests/lab runs its
# libvirtd and virtlogd chrooted there (KVM_LIBVIRT=11.3), with what libvirt-daemon-system would
# have set up: the QEMU user and group, and a qemu.conf for the lab (QEMU as root, no security driver).
libvirt11() {
  local dir=$CACHE/root/bookworm
  root bookworm
  if [ ! -x "$dir/usr/sbin/libvirtd" ] || [ ! -x "$dir/usr/bin/qemu-system-x86_64" ] || [ ! -e "$dir/usr/include/libvirt/libvirt.h" ]; then
    log "installing libvirt 11 and QEMU 10 from bookworm-backports in the bookworm root"
    in_root bookworm apt-get install -y -qq --no-install-recommends -t bookworm-backports \
      libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 libvirt-dev >"$CACHE/root/bookworm-libvirt11.log" 2>&1 ||
      { tail -20 "$CACHE/root/bookworm-libvirt11.log" >&2; exit 1; }
  fi
  in_root bookworm sh -c 'getent group kvm >/dev/null || groupadd -r kvm
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu'
  # namespaces = []: chrooted, libvirt's private /dev for each QEMU has no usable /dev/ptmx ("Failed to
  # create PTY"), so QEMU uses the root's /dev, the machine's bound into it
  printf '# written by scripts/deps.sh libvirt11 for tests/lab\nsecurity_driver = "none"\nuser = "root"\ngroup = "root"\nnamespaces = []\n' \
    >"$dir/etc/libvirt/qemu.conf"
}

need_root; no_daemons
[ $# -gt 0 ] || set -- all
for what in "$@"; do
  case $what in
    build|agents|qemu|watchdog|haproxy|zabbix|trixie|proxy|deb|debroot|libvirt11) $what ;;
    all) build; agents; qemu; watchdog; haproxy; zabbix; trixie; proxy; deb; debroot ;;
    *) log "unknown target $what (build|agents|qemu|watchdog|haproxy|zabbix|trixie|proxy|deb|debroot|libvirt11|all)"; exit 2 ;;
  esac
done
