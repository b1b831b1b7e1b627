# nooelint: oelint.var.bbclassextend - a gateway daemon: nothing needs a native or SDK build of it
SUMMARY = "carehub: BLE health-sensor gateway for care homes"
DESCRIPTION = "Reads BLE health sensors through BlueZ, buffers readings in \
               SQLite and forwards them over mutual-TLS MQTT, with a local \
               staff web UI."
# nooelint: oelint.vars.homepageping - placeholder host like CAREHUB_GIT_URI, and CI lints offline
HOMEPAGE = "https://git.example.invalid/carehub"
BUGTRACKER = "https://git.example.invalid/carehub/issues"
SECTION = "net"

# The project is Apache-2.0 (Cargo.toml). The binary also links crates
# statically: CAREHUB_CRATE_LICENSES (carehub-licenses.inc, written by
# scripts/yocto-crates from the crates the aarch64 binary links) adds their
# licences, so the image's licence manifest names everything that is in it.
LICENSE = "Apache-2.0 & ${CAREHUB_CRATE_LICENSES}"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# Where the project's git repository lives. Set it in local.conf or the kas
# file; the layer README explains it. The branch only matters for fetching:
# the build always uses SRCREV.
CAREHUB_GIT_URI ?= "git://git.example.invalid/carehub.git;protocol=https;branch=main"

# Native libraries the crates link: libdbus (btleplug's BlueZ backend via
# dbus-sys) and libsystemd (sd_notify/journal). pkg-config finds them.
DEPENDS += "dbus systemd"

PV .= "+git"

SRC_URI = "${CAREHUB_GIT_URI};destsuffix=git"

# Every crate of Cargo.lock with its checksum, so do_compile needs no network.
require ${BPN}-crates.inc
require ${BPN}-licenses.inc

# files/carehub.toml: the image's production configuration (BLE source,
# HTTPS on every interface), not the demo example.
SRC_URI += "file://carehub.toml"

# Pin to a released commit (or override in local.conf) and regenerate
# carehub-crates.inc from that commit's Cargo.lock: scripts/yocto-crates.
SRCREV ?= "0000000000000000000000000000000000000000"

# Releases before styhead unpack into WORKDIR and have no UNPACKDIR.
UNPACKDIR ??= "${WORKDIR}"
S = "${UNPACKDIR}/git"

inherit cargo cargo-update-recipe-crates pkgconfig systemd useradd

CVE_PRODUCT = "carehub"

# The crate uses edition 2024 and rust-version 1.89. Scarthgap ships Rust 1.75:
# add meta-lts-mixins (branch scarthgap/rust) or another layer that sets
# RUSTVERSION to 1.89 or newer. Without it the build stops before do_configure
# with a message saying so, instead of a compiler error deep in do_compile.
CAREHUB_MIN_RUST = "1.89"
python carehub_check_rust() {
    rust = (d.getVar('RUSTVERSION') or '').rstrip('%').rstrip('.')
    need = d.getVar('CAREHUB_MIN_RUST')
    if rust and bb.utils.vercmp_string_op(rust, need, '<'):
        bb.fatal('carehub needs Rust >= %s but RUSTVERSION is %s; add meta-lts-mixins '
                 '(branch scarthgap/rust), see the carehub layer README' % (need, rust))
}
carehub_check_rust[doc] = "Stop early when the configured Rust is older than the crate needs"
do_configure[prefuncs] += "carehub_check_rust"

# The project's release profile strips the binary; let OE split the debug
# symbols into carehub-dbg instead (and avoid the already-stripped QA error).
export CARGO_PROFILE_RELEASE_STRIP = "false"
export CARGO_PROFILE_RELEASE_DEBUG = "line-tables-only"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system carehub; --system bluetooth"
USERADD_PARAM:${PN} = "--system --gid carehub --groups bluetooth \
                       --home-dir ${localstatedir}/lib/carehub --no-create-home \
                       --shell ${base_sbindir}/nologin carehub"

SYSTEMD_SERVICE:${PN} = "carehub.service carehub-provision.service carehub-healthy.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/carehub.service ${D}${systemd_system_unitdir}/

    install -d ${D}${nonarch_libdir}/sysusers.d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/sysusers.d/carehub.conf ${D}${nonarch_libdir}/sysusers.d/carehub.conf
    install -m 0644 ${S}/systemd/tmpfiles.d/carehub.conf ${D}${nonarch_libdir}/tmpfiles.d/carehub.conf

    # The site drop-in is an example for a site layer's bbappend to install
    # (as .../carehub.service.d/10-site.conf); systemd ignores *.example.
    install -d ${D}${datadir}/carehub/examples
    install -m 0644 ${S}/systemd/carehub.service.d/10-site.conf.example ${D}${datadir}/carehub/examples/

    # The gateway image's units: provisioning at boot, the health check that
    # marks a boot good, and carehub.service running the provisioned file.
    install -m 0644 ${S}/systemd/appliance/carehub-provision.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/systemd/appliance/carehub-healthy.service ${D}${systemd_system_unitdir}/
    install -d ${D}${systemd_system_unitdir}/carehub.service.d
    install -m 0644 ${S}/systemd/appliance/carehub.service.d/20-appliance.conf ${D}${systemd_system_unitdir}/carehub.service.d/

    # The production defaults (files/carehub.toml; a site layer's
    # carehub_%.bbappend may put its own file://carehub.toml first in
    # FILESEXTRAPATHS). /etc is read-only on the gateway; `carehub provision`
    # lays each box's settings over this file into /var/lib/carehub.
    install -d -m 0750 ${D}${sysconfdir}/carehub
    install -m 0640 ${UNPACKDIR}/carehub.toml ${D}${sysconfdir}/carehub/carehub.toml
    chown -R root:carehub ${D}${sysconfdir}/carehub

    # The state directory. carehub-image bind-mounts /data/carehub onto it.
    install -d -m 0750 ${D}${localstatedir}/lib/carehub
    chown carehub:carehub ${D}${localstatedir}/lib/carehub
}

FILES:${PN} += "${systemd_system_unitdir}/carehub.service.d \
                ${nonarch_libdir}/sysusers.d/carehub.conf \
                ${nonarch_libdir}/tmpfiles.d/carehub.conf \
                ${localstatedir}/lib/carehub \
"
CONFFILES:${PN} = "${sysconfdir}/carehub/carehub.toml"

# BlueZ's daemon provides the D-Bus API btleplug talks to; dbus is the bus.
# avahi-daemon announces the host name provisioning sets
# (carehub-<id>.local) so staff can type it.
RDEPENDS:${PN} = "avahi-daemon bluez5 dbus"
