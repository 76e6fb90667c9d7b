#!/usr/bin/env bash
# Builds the tiny test guest: the Debian cloud kernel plus a busybox initramfs that brings up eth0 with
# a fixed address, serves HTTP on port 80, runs acpid and qemu-guest-agent, and prints a READY marker on
# ttyS0. Used by tests/lab; see tests/lab/doc.go for how guests are booted.
#
# Usage: tests/guest/build-guest.sh OUT_DIR
#   Writes OUT_DIR/vmlinuz, OUT_DIR/initrd.gz and OUT_DIR/kernel-version.
#
# Inputs (installed by scripts/deps.sh qemu): $KVM_CACHE/kernel/vmlinuz and its modules under
# $KVM_CACHE/kernel/modules/ (either <version>/kernel/... or kernel/... directly), /bin/busybox from
# busybox-static, /usr/sbin/qemu-ga from qemu-guest-agent.
#
# The image is cached in $KVM_CACHE/guest/<flavour>/<key>/, keyed by a hash of this script, the kernel,
# busybox and qemu-ga, so a rebuild happens only when one of them changes.
#
# KVM_KERNEL_FLAVOUR=kernel-watchdog (scripts/deps.sh watchdog) takes the kernel from
# $KVM_CACHE/kernel-watchdog instead: Debian's standard flavour, whose i6300esb driver the cloud
# flavour lacks (tests/lab's watchdog guests). i6300esb is loaded when the kernel has it.
#
# Kernel command line switches read by the guest's /etc/rcS:
#   lvip=ADDR/PREFIX  fixed address on eth0 (without it: udhcpc)
#   lvgw=GW           default route
#   lvname=NAME       hostname, and the name in the HTTP page
#   lvacpi=0|1        1 (default): run acpid, so an ACPI power button powers the guest off
#   lvagent=0|1       1 (default): run qemu-ga on the org.qemu.guest_agent.0 port
#   lvga=0|1          same as lvagent, still read, but DO NOT PASS IT: QEMU's direct kernel boot
#                     looks for "vga=" anywhere in the command line (strstr), so lvga=1 sets video
#                     mode 1, which does not exist; with no VGA device the kernel's setup code then
#                     waits 30 s at an invisible "undefined video mode" prompt before booting.
set -euo pipefail

OUT=${1:?usage: build-guest.sh OUT_DIR}
CACHE=${KVM_CACHE:-/var/cache/zabbix-agent2-plugin-kvm}
FLAVOUR=${KVM_KERNEL_FLAVOUR:-kernel}
case $FLAVOUR in kernel|kernel-watchdog) ;; *) echo "build-guest: KVM_KERNEL_FLAVOUR=$FLAVOUR: want kernel or kernel-watchdog" >&2; exit 1 ;; esac
KDIR=$CACHE/$FLAVOUR
BUSYBOX=/bin/busybox
QGA=/usr/sbin/qemu-ga
SELF=$(readlink -f "${BASH_SOURCE[0]}")
MARKER=KVMLAB-READY

die() { printf 'build-guest: %s\n' "$*" >&2; exit 1; }

[ -f "$KDIR/vmlinuz" ] || die "no kernel at $KDIR/vmlinuz: run scripts/deps.sh $([ "$FLAVOUR" = kernel ] && echo qemu || echo watchdog)"
[ -x "$BUSYBOX" ] || die "no $BUSYBOX: run scripts/deps.sh qemu (busybox-static)"
[ -x "$QGA" ] || die "no $QGA: run scripts/deps.sh qemu (qemu-guest-agent)"
for tool in cpio gzip ldd sha256sum flock; do command -v "$tool" >/dev/null || die "$tool not found"; done

# The bzImage header holds a pointer (at 0x20E) to the kernel version string, 0x200 bytes further on.
kernel_version() {
  local off
  off=$(od -An -tu2 -j $((0x20E)) -N2 "$1" | tr -d ' ')
  dd if="$1" bs=1 skip=$((off + 0x200)) count=64 2>/dev/null | tr '\0' '\n' | head -1 | cut -d' ' -f1
}
KVER=$(kernel_version "$KDIR/vmlinuz")
[ -n "$KVER" ] || die "cannot read the kernel version from $KDIR/vmlinuz"

if [ -d "$KDIR/modules/$KVER/kernel" ]; then
  MODROOT=$KDIR/modules/$KVER
elif [ -d "$KDIR/modules/kernel" ]; then
  MODROOT=$KDIR/modules
else
  die "no modules for $KVER under $KDIR/modules"
fi

KEY=$(cat "$SELF" "$KDIR/vmlinuz" "$BUSYBOX" "$QGA" | sha256sum | cut -c1-16)
DEST=$CACHE/guest/$FLAVOUR/$KEY

build() {
  local root tmp
  tmp=$(mktemp -d "$CACHE/guest/.build.XXXXXX")
  root=$tmp/root
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,usr/lib/modules,etc/acpi/PWRF,proc,sys,dev,tmp,run,var/log,www/cgi-bin}
  # merged /usr like the host, so the paths ldd prints land where the loader looks
  ln -s usr/lib "$root/lib"
  ln -s usr/lib64 "$root/lib64"
  ln -s /run "$root/var/run"

  cp "$BUSYBOX" "$root/bin/busybox"
  local applet
  while read -r applet; do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done < <("$BUSYBOX" --list-full)
  ln -s /bin/busybox "$root/init"

  # qemu-ga and the libraries it links against
  cp "$QGA" "$root/usr/sbin/qemu-ga"
  local lib
  for lib in $(ldd "$QGA" | awk '/=> \//{print $3} /^\t\//{print $1}'); do
    cp -L "$lib" "$root$lib"
  done

  # virtio modules in dependency order, from each module's depends= string (no depmod in the guest)
  declare -A path=() seen=()
  local f n order=()
  while IFS= read -r f; do
    n=$(basename "$f" .ko); path[${n//-/_}]=$f
  done < <(find "$MODROOT/kernel" -name '*.ko')
  add() {
    local m=${1//-/_} d deps
    [ -n "${seen[$m]:-}" ] && return 0
    [ -n "${path[$m]:-}" ] || { grep -q "/$m.ko" "$MODROOT/modules.builtin" 2>/dev/null && return 0; die "module $m not found under $MODROOT"; }
    seen[$m]=1
    deps=$(tr '\0' '\n' <"${path[$m]}" | sed -n 's/^depends=//p' | head -1)
    for d in ${deps//,/ }; do add "$d"; done
    order+=("$m")
  }
  # pvpanic: a kernel panic reaches QEMU (and libvirt's crashed/panicked event) when the domain has a <panic> device
  for n in virtio_pci virtio_net virtio_console virtio_blk virtio_balloon evdev button pvpanic_mmio pvpanic_pci; do add "$n"; done
  # QEMU's i6300esb watchdog (<watchdog model='i6300esb'/>), only in the standard flavour
  [ -z "${path[i6300esb]:-}" ] || add i6300esb
  for n in "${order[@]}"; do cp "${path[$n]}" "$root/usr/lib/modules/$n.ko"; done
  printf '%s\n' "${order[@]}" >"$root/etc/modules-order"

  cat >"$root/etc/os-release" <<EOF
NAME="kvmlab"
ID=kvmlab
PRETTY_NAME="kvmlab test guest ($KVER)"
VERSION_ID="1"
EOF
  echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
  echo "root:x:0:" >"$root/etc/group"

  cat >"$root/etc/inittab" <<'EOF'
::sysinit:/etc/rcS
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/rc.shutdown
EOF

  cat >"$root/etc/rcS" <<EOF
#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
for m in \$(cat /etc/modules-order); do insmod /lib/modules/\$m.ko || echo "rcS: insmod \$m failed"; done

ip= gw= name=kvmlab acpi=1 ga=1
for w in \$(cat /proc/cmdline); do
  case \$w in
    lvip=*) ip=\${w#lvip=} ;;
    lvgw=*) gw=\${w#lvgw=} ;;
    lvname=*) name=\${w#lvname=} ;;
    lvacpi=*) acpi=\${w#lvacpi=} ;;
    lvagent=*) ga=\${w#lvagent=} ;;
    lvga=*) ga=\${w#lvga=} ;;
  esac
done
hostname "\$name"

i=0; while [ ! -e /sys/class/net/eth0 ] && [ \$i -lt 50 ]; do sleep 0.1; i=\$((i+1)); done
ip link set lo up
ip link set eth0 up
if [ -n "\$ip" ]; then
  ip addr add "\$ip" dev eth0
  [ -z "\$gw" ] || ip route add default via "\$gw"
else
  udhcpc -i eth0 -q -n -t 10 || echo "rcS: udhcpc failed"
fi

# some block I/O, so the disk's counters are not all zero
[ -b /dev/vda ] && dd if=/dev/vda of=/dev/null bs=64k count=4 2>/dev/null

echo "kvmlab guest \$name" >/www/index.html
httpd -p 80 -h /www

[ "\$acpi" = 0 ] || acpid -l /var/log/acpid.log

if [ "\$ga" != 0 ]; then
  port=
  i=0
  while [ -z "\$port" ] && [ \$i -lt 50 ]; do
    for p in /sys/class/virtio-ports/*; do
      [ "\$(cat \$p/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/\${p##*/}
    done
    [ -n "\$port" ] || { sleep 0.1; i=\$((i+1)); }
  done
  if [ -n "\$port" ]; then
    qemu-ga -d -m virtio-serial -p "\$port" -t /run -f /run/qemu-ga.pid
  else
    echo "rcS: no org.qemu.guest_agent.0 port"
  fi
fi

echo "$MARKER name=\$name ip=\$ip acpi=\$acpi agent=\$ga" >/dev/ttyS0
EOF

  cat >"$root/etc/rc.shutdown" <<'EOF'
#!/bin/sh
echo "KVMLAB-SHUTDOWN" >/dev/ttyS0
EOF

  # busybox acpid spawns /etc/acpi/<ACTION>/<PARAM> for the power button event PWRF/00000080
  printf '#!/bin/sh\npoweroff\n' >"$root/etc/acpi/PWRF/00000080"

  # qemu-ga runs "/sbin/shutdown -h|-r|-H -P +0 MSG" for guest-shutdown
  cat >"$root/sbin/shutdown" <<'EOF'
#!/bin/sh
case " $* " in
  *" -r "*) exec reboot ;;
  *" -H "*) exec halt ;;
  *) exec poweroff ;;
esac
EOF

  # A way to stop httpd that needs neither the agent nor the kernel command line (tests/lab KillHTTPD).
  cat >"$root/www/cgi-bin/lab-kill-httpd" <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\nkilling httpd\n'
killall httpd
EOF
  chmod 755 "$root/etc/rcS" "$root/etc/rc.shutdown" "$root/etc/acpi/PWRF/00000080" "$root/sbin/shutdown" "$root/www/cgi-bin/lab-kill-httpd"

  (cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -6) >"$tmp/initrd.gz"
  cp "$KDIR/vmlinuz" "$tmp/vmlinuz"
  echo "$KVER" >"$tmp/kernel-version"
  rm -rf "$root"
  mv -T "$tmp" "$DEST"
}

mkdir -p "$CACHE/guest/$FLAVOUR"
exec 9>"$CACHE/guest/.lock"
flock -w 300 9 || die "timeout waiting for $CACHE/guest/.lock"
if [ ! -f "$DEST/initrd.gz" ]; then
  start=$(date +%s%N)
  build
  # older images of this flavour are for a kernel or script that no longer exists (and images
  # directly under guest/ are from before the flavours)
  find "$CACHE/guest/$FLAVOUR" -mindepth 1 -maxdepth 1 -not -name "$KEY" -exec rm -rf {} +
  find "$CACHE/guest" -mindepth 1 -maxdepth 1 -not -name .lock -not -name kernel -not -name kernel-watchdog -exec rm -rf {} +
  printf 'build-guest: built %s (kernel %s) in %d ms\n' "$DEST" "$KVER" $((($(date +%s%N) - start) / 1000000)) >&2
else
  printf 'build-guest: cached %s (kernel %s)\n' "$DEST" "$KVER" >&2
fi
mkdir -p "$OUT"
cp "$DEST/vmlinuz" "$DEST/initrd.gz" "$DEST/kernel-version" "$OUT/"
exec 9>&-
