# With kas/rauc.yml: replace meta-raspberrypi's boot script with one that
# picks the RAUC slot (A or B) to boot. Only under DISTRO = "carehub".
FILESEXTRAPATHS:prepend:carehub := "${THISDIR}/files:"
