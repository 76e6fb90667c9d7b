#!/usr/bin/env bash
# Builds zabbix-agent2-plugin-kvm_<version>_amd64.deb with Debian's own tools (dpkg-deb, and
# dpkg-shlibdeps for the C libraries the binary links), from a binary built by `make deb`.
# Usage: packaging/deb/build.sh BINARY OUTDIR   (env DEB_VERSION overrides the version)
set -euo pipefail
bin=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
pkg=zabbix-agent2-plugin-kvm
plugdir=/usr/sbin/zabbix-agent2-plugin
conf=/etc/zabbix/zabbix_agent2.d/plugins.d/kvm.conf

die() { echo "deb: $*" >&2; exit 1; }

# debversion: git describe made a Debian version that sorts forward with the history: a tag v1.2
# gives 1.2, 3 commits later 1.2+git3.gHASH; without a tag 0.0~gitN.gHASH (N = commits so far).
debversion() {
  local d n h
  d=$(git -C "$top" describe --tags --long --dirty 2>/dev/null || true)
  if [[ $d =~ ^v?([0-9][A-Za-z0-9.+~]*)-([0-9]+)-g([0-9a-f]+)(-dirty)?$ ]]; then
    v=${BASH_REMATCH[1]}
    [ "${BASH_REMATCH[2]}" = 0 ] || v+="+git${BASH_REMATCH[2]}.g${BASH_REMATCH[3]}"
    [ -z "${BASH_REMATCH[4]}" ] || v+="+dirty"
  else
    n=$(git -C "$top" rev-list --count HEAD 2>/dev/null || echo 0)
    h=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)
    v="0.0~git$n.g$h"
    [ -z "$(git -C "$top" status --porcelain --untracked-files=no 2>/dev/null)" ] || v+="+dirty"
  fi
  echo "$v"
}
version=${DEB_VERSION:-$(debversion)}
dpkg --validate-version "$version" || die "not a Debian version: $version"

# the shipped kvm.conf must start the binary where the package puts it
grep -qx "Plugins.KVM.System.Path=$plugdir/$pkg" "$top/conf/kvm.conf" ||
  die "conf/kvm.conf: Plugins.KVM.System.Path is not $plugdir/$pkg"

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
root=$work/root
install -d -m 0755 "$root/DEBIAN" "$root$plugdir" "$root${conf%/*}" \
  "$root/usr/share/$pkg/templates" "$root/usr/share/doc/$pkg/examples" \
  "$root/usr/lib/systemd/system/zabbix-agent2.service.d"
install -m 0755 "$bin" "$root$plugdir/$pkg"
strip --remove-section=.comment --remove-section=.note "$root$plugdir/$pkg"
install -m 0644 "$top/conf/kvm.conf" "$root$conf"
install -m 0644 "$top"/conf/templates/*.yaml "$root/usr/share/$pkg/templates/"
install -m 0644 "$top/conf/zabbix_agent2.conf" "$top/conf/haproxy.cfg" "$root/usr/share/doc/$pkg/examples/"
install -m 0644 "$here/kvm-plugin.conf" "$root/usr/lib/systemd/system/zabbix-agent2.service.d/kvm-plugin.conf"
install -m 0644 "$top/README.md" "$top"/docs/*.md "$root/usr/share/doc/$pkg/"

maint=${DEB_MAINTAINER:-$(git -C "$top" log -1 --format="%an <%ae>" 2>/dev/null || true)}
[ -n "$maint" ] || die "no maintainer: set DEB_MAINTAINER (default: the last commit's author)"
sed -e "s/@YEAR@/$(date -u +%Y)/" -e "s/@MAINTAINER@/${maint//\//\\/}/" "$here/copyright.in" >"$root/usr/share/doc/$pkg/copyright"
{
  printf '%s (%s) unstable; urgency=medium\n\n' "$pkg" "$version"
  printf '  * Built by make deb from git %s.\n' "$(git -C "$top" describe --tags --always --dirty 2>/dev/null || echo unknown)"
  printf '    The changes are the git history of the project.\n\n'
  printf ' -- %s  %s\n' "$maint" "$(date -R -u)"
} | gzip -9n >"$root/usr/share/doc/$pkg/changelog.gz"
# Debian policy 12.3: documentation over 4 kB is compressed (the examples are left readable)
find "$root/usr/share/doc/$pkg" -maxdepth 1 -name '*.md' -size +4k -exec gzip -9n {} +

# Depends: what dpkg-shlibdeps computes from the libraries the binary links (it wants a debian/
# directory with a control file, so it gets a minimal one), with libvirt0 raised to the version
# built against: the Go binding resolves symbols of the libvirt it was compiled with.
mkdir -p "$work/src/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: amd64\n' "$pkg" "$pkg" >"$work/src/debian/control"
shlibs=$(cd "$work/src" && dpkg-shlibdeps -O "$root$plugdir/$pkg" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || die "dpkg-shlibdeps found no dependencies (is dpkg-dev installed?)"
libvirt=$(dpkg-query -W -f='${Version}' libvirt0 2>/dev/null) || die "libvirt0 is not installed: scripts/deps.sh build"
depends=$(echo "$shlibs" | tr ',' '\n' | sed 's/^ *//' | grep -v '^libvirt0\b' | paste -sd, | sed 's/,/, /g')
depends="$depends, libvirt0 (>= $libvirt), zabbix-agent2 (>= 1:6.0), adduser"

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: amd64
Maintainer: $maint
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Description: Zabbix agent 2 plugin for self-healing KVM hypervisors
 A loadable plugin for zabbix_agent2 that monitors libvirt domains,
 qemu-guest-agent and haproxy from the hypervisor, and gives Zabbix Actions
 safe, audited, rate-limited controls (gentle restart, forced restart, guest
 commands) that work even when a guest is hung, because every control goes
 through libvirt.
 .
 The same binary is the command-line tool that Zabbix remote commands call.
 The package also restarts zabbix-agent2 whenever it exits (a systemd
 drop-in), as the agent exits when a plugin process dies.
CONTROL
echo "$conf" >"$root/DEBIAN/conffiles"
install -m 0755 "$here/postinst" "$here/postrm" "$root/DEBIAN/"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort | xargs md5sum) >"$root/DEBIAN/md5sums"

mkdir -p "$out"
deb=$out/${pkg}_${version}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
