# nooelint: oelint.var.suggestedvar.BUGTRACKER, oelint.var.suggestedvar.CVE_PRODUCT, oelint.var.suggestedvar.SECTION
# (an image recipe: nothing is packaged, so no bug tracker, CVE product or section applies)
SUMMARY = "carehub gateway image for Raspberry Pi 4 and 5"
DESCRIPTION = "Read-only root with systemd, BlueZ and carehub; writable /data \
               for the reading buffer, certificates and Bluetooth bonds."
LICENSE = "MIT"

inherit core-image features_check

# carehub's units, the /data binds and timesyncd need systemd as init, and
# BlueZ needs the bluetooth feature: DISTRO = "carehub" (conf/distro) has both.
REQUIRED_DISTRO_FEATURES = "systemd bluetooth"

IMAGE_FEATURES += "read-only-rootfs"
# Never an empty or well-known password, whatever local.conf asks for. Root is
# locked (no password at all); see docs/imaging.md for how engineers get in.
IMAGE_FEATURES:remove = "debug-tweaks allow-empty-password empty-root-password allow-root-login"

# IMAGE_INSTALL is set whole, so nothing arrives through
# packagegroup-machine-base: the kernel modules (the Pi kernel builds
# Bluetooth, hci_uart, btbcm and brcmfmac as modules) are named here, and
# carehub-persist loads them at boot (modules-load.d).
IMAGE_INSTALL = "packagegroup-core-boot \
                 kernel-modules \
                 carehub \
                 carehub-persist \
                 bluez5 \
                 pi-bluetooth \
                 wpa-supplicant \
                 avahi-daemon \
                 tzdata \
                 tzdata-europe \
                 ${CORE_IMAGE_EXTRA_INSTALL} \
"

# The Pi's Bluetooth and Wi-Fi firmware (linux-firmware-rpidistro-bcm4345x is
# the Wi-Fi half, for brcmfmac). The machine configs recommend these too, but
# a gateway without its radio is useless, so they are required here. btbcm
# loads the .hcd file when hci_uart probes the controller.
# Pi 4: CYW43455 (BCM4345C0). Pi 5: the same chip, plus the C5 revision found
# on later boards.
CAREHUB_BT_FIRMWARE = ""
# nooelint: oelint.vars.specific - a meta-raspberrypi machine, which oelint's database does not know
CAREHUB_BT_FIRMWARE:raspberrypi4-64 = "linux-firmware-rpidistro-bcm43455 bluez-firmware-rpidistro-bcm4345c0-hcd"
# nooelint: oelint.vars.specific - a meta-raspberrypi machine, which oelint's database does not know
CAREHUB_BT_FIRMWARE:raspberrypi5 = "linux-firmware-rpidistro-bcm43455 bluez-firmware-rpidistro-bcm4345c0-hcd \
                                    linux-firmware-rpidistro-bcm43456 bluez-firmware-rpidistro-bcm4345c5-hcd"
IMAGE_INSTALL += "${CAREHUB_BT_FIRMWARE}"

# Time: systemd-timesyncd (part of oe-core's systemd package with its default
# timesyncd PACKAGECONFIG). The Pi has no RTC; carehub-persist keeps
# timesyncd's clock file on /data so the clock starts from the last known time
# rather than the build date.

# SSH for field engineers, key only. Root has no password, so nobody gets in
# without a key. The keys come from the box's provisioning bundle
# (authorized_keys beside provision.toml; `carehub provision` checks them and
# installs them as /data/system/authorized_keys, root's, mode 0600) or, for
# every box of a site, from a file named by CAREHUB_SSH_AUTHORIZED_KEYS
# (local.conf or kas), built into the image as root's ~/.ssh/authorized_keys.
# sshd (OpenSSH, password and keyboard-interactive logins disabled, host keys
# kept in /data/ssh) listens only on a box that has keys: sshd.socket has a
# condition on either file (carehub-persist). CAREHUB_SSH = "0" leaves SSH
# out of the image altogether.
CAREHUB_SSH ??= "1"
CAREHUB_SSH_AUTHORIZED_KEYS ??= ""
IMAGE_FEATURES += "${@'ssh-server-openssh' if d.getVar('CAREHUB_SSH') == '1' else ''}"

carehub_ssh_key_only() {
    [ "${CAREHUB_SSH}" = "1" ] || return 0
    if [ -n "${CAREHUB_SSH_AUTHORIZED_KEYS}" ]; then
        [ -f "${CAREHUB_SSH_AUTHORIZED_KEYS}" ] || bbfatal "CAREHUB_SSH_AUTHORIZED_KEYS: no file ${CAREHUB_SSH_AUTHORIZED_KEYS}"
        install -d -m 0700 ${IMAGE_ROOTFS}${ROOT_HOME}/.ssh
        install -m 0600 ${CAREHUB_SSH_AUTHORIZED_KEYS} ${IMAGE_ROOTFS}${ROOT_HOME}/.ssh/authorized_keys
    fi
    for conf in sshd_config sshd_config_readonly; do
        f=${IMAGE_ROOTFS}${sysconfdir}/ssh/$conf
        [ -f "$f" ] || continue
        # sshd keeps the first value it reads, so these go first.
        sed -i -e '/^[#[:space:]]*PasswordAuthentication[[:space:]]/d' \
               -e '/^[#[:space:]]*KbdInteractiveAuthentication[[:space:]]/d' \
               -e '/^[#[:space:]]*PermitRootLogin[[:space:]]/d' \
               -e '/^[#[:space:]]*PermitEmptyPasswords[[:space:]]/d' \
               -e '/^[#[:space:]]*AuthorizedKeysFile[[:space:]]/d' \
               -e 's,^HostKey ${localstatedir}/run/ssh/,HostKey /data/ssh/,' "$f"
        sed -i -e '1i AuthorizedKeysFile .ssh/authorized_keys /data/system/authorized_keys' \
               -e '1i PasswordAuthentication no' \
               -e '1i KbdInteractiveAuthentication no' \
               -e '1i PermitEmptyPasswords no' \
               -e '1i PermitRootLogin prohibit-password' "$f"
    done
    # read_only_rootfs_hook (which runs before this) points sshd's key
    # directory at /var/run/ssh, a tmpfs: the host keys would change on every
    # boot. Keep them on /data instead (created by carehub-data-dirs.service).
    if [ -f ${IMAGE_ROOTFS}${sysconfdir}/default/ssh ]; then
        sed -i -e 's,^SYSCONFDIR=.*,SYSCONFDIR=/data/ssh,' ${IMAGE_ROOTFS}${sysconfdir}/default/ssh
    fi
}

# The read-only root cannot be fixed on the box, so refuse to build an image
# in which any account has an empty password.
carehub_no_empty_passwords() {
    empty=$(awk -F: '$2 == "" { print $1 }' ${IMAGE_ROOTFS}${sysconfdir}/shadow)
    [ -z "$empty" ] || bbfatal "accounts with an empty password: $empty"
}

# The bind mounts of carehub-persist need their mount points in the read-only
# root. mkdir -p leaves directories that packages ship (with their modes) alone.
carehub_mount_points() {
    mkdir -p ${IMAGE_ROOTFS}${localstatedir}/lib/carehub \
             ${IMAGE_ROOTFS}${localstatedir}/lib/bluetooth \
             ${IMAGE_ROOTFS}${localstatedir}/lib/systemd/timesync
}

carehub_mount_points[doc] = "Create the /var/lib mount points for the binds onto /data"
carehub_ssh_key_only[doc] = "Key-only OpenSSH (provisioned or built-in keys) with host keys on /data"
carehub_no_empty_passwords[doc] = "Fail the image if any account has an empty password"
# :append so these run after oe-core's own hooks (read_only_rootfs_hook among them).
ROOTFS_POSTPROCESS_COMMAND:append = " carehub_mount_points carehub_ssh_key_only carehub_no_empty_passwords"

IMAGE_FSTYPES = "wic.bz2 wic.bmap"
WKS_FILE = "carehub-rpi.wks"
