# nooelint: oelint.var.bbclassextend, oelint.var.suggestedvar.CVE_PRODUCT
# (only this layer's own systemd units, for the target: no native or SDK
# variant, and no upstream product for CVE matching)
SUMMARY = "Persistent state on /data for the read-only carehub image"
DESCRIPTION = "Bind-mounts /var/lib/carehub, /var/lib/bluetooth and \
               /var/lib/systemd/timesync onto the writable /data partition \
               that wic/carehub-rpi.wks creates."
# nooelint: oelint.vars.homepageping - placeholder host, as in the carehub recipe; CI lints offline
HOMEPAGE = "https://git.example.invalid/carehub"
BUGTRACKER = "https://git.example.invalid/carehub/issues"
SECTION = "base"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile - the unit files are this layer's own, under the MIT text oe-core ships
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://carehub-data-dirs.service \
           file://var-lib-carehub.mount \
           file://var-lib-bluetooth.mount \
           file://var-lib-systemd-timesync.mount \
           file://bluetooth-data.conf \
           file://sshdgenkeys-data.conf \
"

# Releases before styhead unpack into WORKDIR and have no UNPACKDIR.
UNPACKDIR ??= "${WORKDIR}"
S = "${UNPACKDIR}"

inherit allarch systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

SYSTEMD_SERVICE:${PN} = "var-lib-carehub.mount \
                         var-lib-bluetooth.mount \
                         var-lib-systemd-timesync.mount \
"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${systemd_system_unitdir}
    for unit in carehub-data-dirs.service var-lib-carehub.mount \
                var-lib-bluetooth.mount var-lib-systemd-timesync.mount; do
        install -m 0644 ${S}/$unit ${D}${systemd_system_unitdir}/
    done

    install -d ${D}${systemd_system_unitdir}/bluetooth.service.d
    install -m 0644 ${S}/bluetooth-data.conf ${D}${systemd_system_unitdir}/bluetooth.service.d/10-carehub-data.conf
    install -d ${D}${systemd_system_unitdir}/sshdgenkeys.service.d
    install -m 0644 ${S}/sshdgenkeys-data.conf ${D}${systemd_system_unitdir}/sshdgenkeys.service.d/10-carehub-data.conf

    # Mount point of the data partition. The bind mount points below
    # /var/lib belong to carehub, bluez5 and systemd; carehub-image makes sure
    # they exist without taking them over from those packages.
    install -d ${D}/data
}

FILES:${PN} += "${systemd_system_unitdir} /data"

# carehub-data-dirs.service chowns /data/carehub to the carehub user.
RDEPENDS:${PN} = "carehub"
