# carehub's RAUC slot layout (A/B root filesystems on the SD card, U-Boot as
# the bootloader). Used with kas/rauc.yml, which sets DISTRO_FEATURES rauc.
#
# The keyring (CA certificate that bundles are checked against) is a site
# secret and is not in this layer: set RAUC_KEYRING_FILE and add its directory
# to FILESEXTRAPATHS, or set RAUC_KEYRING_URI, in the site configuration.
FILESEXTRAPATHS:prepend:carehub := "${THISDIR}/files:"

SRC_URI:append:carehub = " file://system.conf.in file://fw_env.config file://mark-good-after-carehub.conf"

do_install:append:carehub() {
    src=${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}
    # meta-rauc only warns about its placeholder keyring; a gateway that
    # trusts no real CA could never install an update, so stop here instead.
    grep -q -- '-----BEGIN CERTIFICATE-----' ${D}${sysconfdir}/rauc/${RAUC_KEYRING_FILE} \
        || bbfatal "no RAUC keyring certificate: set CAREHUB_RAUC_KEYRING_DIR (see kas/rauc.yml)"
    sed -e 's,@COMPATIBLE@,carehub-${MACHINE},' -e 's,@KEYRING@,${RAUC_KEYRING_FILE},' \
        $src/system.conf.in > ${D}${sysconfdir}/rauc/system.conf
    install -m 0644 $src/fw_env.config ${D}${sysconfdir}/fw_env.config
    install -d ${D}${systemd_system_unitdir}/rauc-mark-good.service.d
    install -m 0644 $src/mark-good-after-carehub.conf \
        ${D}${systemd_system_unitdir}/rauc-mark-good.service.d/10-carehub.conf
    # Mount point of the boot partition (wic/carehub-rpi-ab.wks), where
    # U-Boot's environment lives; the root filesystem is read-only.
    install -d ${D}/boot/firmware
}

FILES:${PN}:append:carehub = " ${sysconfdir}/fw_env.config /boot/firmware"
FILES:${PN}:append:carehub = " ${systemd_system_unitdir}/rauc-mark-good.service.d"
