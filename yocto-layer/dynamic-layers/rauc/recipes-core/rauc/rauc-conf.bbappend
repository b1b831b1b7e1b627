# carehub's RAUC slot layout (A/B root filesystems on the SD card, U-Boot as
# the bootloader). Used with kas/rauc.yml, which sets DISTRO_FEATURES rauc.
#
# The keyring (CA certificate that bundles are checked against) is a site
# secret and is not in this layer: set RAUC_KEYRING_FILE and add its directory
# to FILESEXTRAPATHS, or set RAUC_KEYRING_URI, in the site configuration.
FILESEXTRAPATHS:prepend:carehub := "${THISDIR}/files:"

SRC_URI:append:carehub = " file://system.conf.in file://fw_env.config"
SRC_URI:append:carehub = " file://carehub-post-install file://carehub-rollback"
SRC_URI:append:carehub = " file://carehub-rollback.service file://carehub-healthy-rauc.conf"

do_install:append:carehub() {
    src=${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}
    # meta-rauc only warns about its placeholder keyring; a gateway that
    # trusts no real CA could never install an update, so stop here instead.
    grep -q -- '-----BEGIN CERTIFICATE-----' ${D}${sysconfdir}/rauc/${RAUC_KEYRING_FILE} \
        || bbfatal "no RAUC keyring certificate: set CAREHUB_RAUC_KEYRING_DIR (see kas/rauc.yml)"
    sed -e 's,@COMPATIBLE@,carehub-${MACHINE},' -e 's,@KEYRING@,${RAUC_KEYRING_FILE},' \
        $src/system.conf.in > ${D}${sysconfdir}/rauc/system.conf
    install -m 0644 $src/fw_env.config ${D}${sysconfdir}/fw_env.config
    # meta-rauc's rauc-mark-good.service runs after boot-complete.target,
    # which carehub-healthy.service (the carehub recipe) is ordered before
    # and required by: a slot is marked good only once carehub is healthy.
    # A slot on trial (the post-install handler names it) that fails the
    # check is marked bad and the box reboots into the previous slot.
    install -d ${D}${libexecdir}
    install -m 0755 $src/carehub-post-install $src/carehub-rollback ${D}${libexecdir}/
    install -d ${D}${systemd_system_unitdir}/carehub-healthy.service.d
    install -m 0644 $src/carehub-rollback.service ${D}${systemd_system_unitdir}/
    install -m 0644 $src/carehub-healthy-rauc.conf \
        ${D}${systemd_system_unitdir}/carehub-healthy.service.d/10-rauc.conf
    # Mount point of the boot partition (wic/carehub-rpi-ab.wks), where
    # U-Boot's environment lives; the root filesystem is read-only.
    install -d ${D}/boot/firmware
}

FILES:${PN}:append:carehub = " ${sysconfdir}/fw_env.config /boot/firmware"
FILES:${PN}:append:carehub = " ${libexecdir}/carehub-post-install ${libexecdir}/carehub-rollback"
FILES:${PN}:append:carehub = " ${systemd_system_unitdir}/carehub-rollback.service"
FILES:${PN}:append:carehub = " ${systemd_system_unitdir}/carehub-healthy.service.d"
# fw_printenv/fw_setenv for RAUC's U-Boot backend. meta-rauc adds them only
# when PREFERRED_PROVIDER_virtual/bootloader names u-boot, which
# meta-raspberrypi does not set; libubootenv-bin is the tool package alone,
# and the environment location stays this recipe's /etc/fw_env.config (the
# image keeps u-boot-env, which ships its own, out: see kas/rauc.yml).
RDEPENDS:${PN}:append:carehub = " libubootenv-bin"
