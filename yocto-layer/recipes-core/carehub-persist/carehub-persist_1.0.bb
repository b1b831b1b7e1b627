# nooelint: oelint.var.bbclassextend, oelint.var.suggestedvar.CVE_PRODUCT
# (only this layer's own systemd units, for the target: no native or SDK
# variant, and no upstream product for CVE matching)
SUMMARY = "Persistent state on /data for the read-only carehub image"
DESCRIPTION = "Mounts the data and boot partitions from units in the root \
               filesystem (so a RAUC-installed slot has them too), bind-mounts \
               /var/lib/carehub, /var/lib/bluetooth and /var/lib/systemd/timesync \
               onto /data, keeps a size-capped journal there, loads the \
               Bluetooth, Wi-Fi and watchdog modules and arms the hardware \
               watchdog."
# nooelint: oelint.vars.homepageping - placeholder host, as in the carehub recipe; CI lints offline
HOMEPAGE = "https://git.example.invalid/carehub"
BUGTRACKER = "https://git.example.invalid/carehub/issues"
SECTION = "base"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile - the unit files are this layer's own, under the MIT text oe-core ships
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://data.mount \
           file://boot-firmware.mount \
           file://carehub-data-dirs.service \
           file://var-lib-carehub.mount \
           file://var-lib-bluetooth.mount \
           file://var-lib-systemd-timesync.mount \
           file://var-volatile-log-journal.mount \
           file://carehub-journald.conf \
           file://bluetooth-data.conf \
           file://sshdgenkeys-data.conf \
           file://sshd-socket-keys.conf \
           file://carehub-modules.conf \
           file://carehub-watchdog.conf \
           file://carehub-low-ports.conf \
           file://80-wlan.network \
           file://wpa-supplicant-data.conf \
"

# Releases before styhead unpack into WORKDIR and have no UNPACKDIR.
UNPACKDIR ??= "${WORKDIR}"
S = "${UNPACKDIR}"

inherit allarch systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

SYSTEMD_SERVICE:${PN} = "data.mount \
                         boot-firmware.mount \
                         var-lib-carehub.mount \
                         var-lib-bluetooth.mount \
                         var-lib-systemd-timesync.mount \
                         var-volatile-log-journal.mount \
"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${systemd_system_unitdir}
    for unit in data.mount boot-firmware.mount \
                carehub-data-dirs.service var-lib-carehub.mount \
                var-lib-bluetooth.mount var-lib-systemd-timesync.mount \
                var-volatile-log-journal.mount; do
        install -m 0644 ${S}/$unit ${D}${systemd_system_unitdir}/
    done

    install -d ${D}${systemd_system_unitdir}/bluetooth.service.d
    install -m 0644 ${S}/bluetooth-data.conf ${D}${systemd_system_unitdir}/bluetooth.service.d/10-carehub-data.conf
    install -d ${D}${systemd_system_unitdir}/sshdgenkeys.service.d
    install -m 0644 ${S}/sshdgenkeys-data.conf ${D}${systemd_system_unitdir}/sshdgenkeys.service.d/10-carehub-data.conf
    install -d ${D}${systemd_system_unitdir}/sshd.socket.d
    install -m 0644 ${S}/sshd-socket-keys.conf ${D}${systemd_system_unitdir}/sshd.socket.d/10-carehub-keys.conf

    # The journal persistent on /data (the mount above) and capped in size.
    install -d ${D}${systemd_unitdir}/journald.conf.d
    install -m 0644 ${S}/carehub-journald.conf ${D}${systemd_unitdir}/journald.conf.d/10-carehub.conf

    # Bluetooth (hci_uart, btbcm), Wi-Fi (brcmfmac) and the watchdog are
    # modules on the Pi kernel: load them at boot.
    install -d ${D}${sysconfdir}/modules-load.d
    install -m 0644 ${S}/carehub-modules.conf ${D}${sysconfdir}/modules-load.d/carehub.conf
    # PID 1 pings the hardware watchdog.
    install -d ${D}${systemd_unitdir}/system.conf.d
    install -m 0644 ${S}/carehub-watchdog.conf ${D}${systemd_unitdir}/system.conf.d/10-carehub-watchdog.conf
    # The staff page on 443 without giving carehub a capability.
    install -d ${D}${sysconfdir}/sysctl.d
    install -m 0644 ${S}/carehub-low-ports.conf ${D}${sysconfdir}/sysctl.d/10-carehub-low-ports.conf
    # Wi-Fi, when provisioning wrote /data/system/wpa_supplicant-wlan0.conf:
    # /etc is read-only, so the name wpa_supplicant@wlan0 reads points there.
    install -d ${D}${systemd_unitdir}/network
    install -m 0644 ${S}/80-wlan.network ${D}${systemd_unitdir}/network/80-wlan.network
    install -d ${D}${sysconfdir}/wpa_supplicant
    ln -sf /data/system/wpa_supplicant-wlan0.conf ${D}${sysconfdir}/wpa_supplicant/wpa_supplicant-wlan0.conf
    install -d ${D}${systemd_system_unitdir}/wpa_supplicant@wlan0.service.d
    install -m 0644 ${S}/wpa-supplicant-data.conf ${D}${systemd_system_unitdir}/wpa_supplicant@wlan0.service.d/10-carehub-data.conf
    install -d ${D}${sysconfdir}/systemd/system/multi-user.target.wants
    ln -sf ${systemd_system_unitdir}/wpa_supplicant@.service \
        ${D}${sysconfdir}/systemd/system/multi-user.target.wants/wpa_supplicant@wlan0.service

    # Mount points of the data and boot partitions. The bind mount points below
    # /var/lib belong to carehub, bluez5 and systemd; carehub-image makes sure
    # they exist without taking them over from those packages.
    install -d ${D}/data ${D}/boot/firmware
}

FILES:${PN} += "${systemd_system_unitdir} ${systemd_unitdir}/system.conf.d \
                ${systemd_unitdir}/journald.conf.d \
                ${systemd_unitdir}/network /data /boot/firmware"

# carehub-data-dirs.service chowns /data/carehub to the carehub user;
# wpa_supplicant@.service is the template the Wi-Fi link above enables.
RDEPENDS:${PN} = "carehub wpa-supplicant"
