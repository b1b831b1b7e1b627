# nooelint: oelint.var.suggestedvar.BUGTRACKER, oelint.var.suggestedvar.CVE_PRODUCT, oelint.var.suggestedvar.SECTION, oelint.var.mandatoryvar.HOMEPAGE, oelint.var.mandatoryvar.SRC_URI, oelint.var.bbclassextend, oelint.file.underscores
# An update bundle, like an image: it packages nothing and fetches nothing
# (the bundle class takes carehub-image's rootfs), so there is no bug tracker,
# CVE product, section, homepage, SRC_URI or native variant, and like image
# recipes it carries no version in its file name.
SUMMARY = "RAUC update bundle with the carehub root filesystem"
DESCRIPTION = "Signed verity bundle that installs carehub-image into the \
               inactive root filesystem slot (see rauc-conf.bbappend)."
LICENSE = "MIT"

inherit bundle

RAUC_BUNDLE_COMPATIBLE = "carehub-${MACHINE}"
RAUC_BUNDLE_VERSION = "${DISTRO_VERSION}-${DATETIME}"
RAUC_BUNDLE_VERSION[vardepsexclude] = "DATETIME"
RAUC_BUNDLE_DESCRIPTION = "carehub gateway root filesystem"
RAUC_BUNDLE_FORMAT = "verity"

RAUC_BUNDLE_SLOTS = "rootfs"
# nooelint: oelint.vars.mispell.unknown - RAUC_SLOT_<slot> is named after the slot, so no list knows it
RAUC_SLOT_rootfs = "carehub-image"
# nooelint: oelint.vars.mispell.unknown - as above
RAUC_SLOT_rootfs[fstype] = "ext4"

# The signing key and certificate are site secrets and never live in this
# layer: kas/rauc.yml passes their paths in from the environment.
RAUC_KEY_FILE ?= "${CAREHUB_RAUC_KEY_FILE}"
RAUC_CERT_FILE ?= "${CAREHUB_RAUC_CERT_FILE}"
