# What carehub needs of BlueZ: bluetoothd and its D-Bus API (btleplug scans
# actively and connects through org.bluez; carehub registers an
# org.bluez.Agent1 for pairing). oe-core's default PACKAGECONFIG already
# builds that, so nothing is added or removed; in particular the deprecated
# tools (hcitool, gatttool) are not needed.
#
# Optional: CAREHUB_BLUEZ_EXPERIMENTAL = "1" (local.conf or kas; the default
# "0" is set in conf/distro/carehub.conf) starts bluetoothd with
# --experimental, which exposes the experimental D-Bus interfaces such as
# advertisement monitors (passive scanning). carehub works without it.
# Everything below applies only with DISTRO = "carehub".

FILESEXTRAPATHS:prepend:carehub := "${THISDIR}/${BPN}:"
SRC_URI:append:carehub = " file://carehub-experimental.conf"

do_install:append:carehub() {
    if [ "${CAREHUB_BLUEZ_EXPERIMENTAL}" = "1" ]; then
        install -d ${D}${systemd_system_unitdir}/bluetooth.service.d
        sed -e 's,@LIBEXECDIR@,${libexecdir},g' ${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/carehub-experimental.conf \
            > ${D}${systemd_system_unitdir}/bluetooth.service.d/20-carehub-experimental.conf
        chmod 0644 ${D}${systemd_system_unitdir}/bluetooth.service.d/20-carehub-experimental.conf
    fi
}

FILES:${PN}:append:carehub = " ${systemd_system_unitdir}/bluetooth.service.d"
