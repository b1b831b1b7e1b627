# Plots a soak CSV (benches/soak.rs) into docs/plots/soak.png:
#   gnuplot -e "csv='docs/soak-2026-12-03.csv'; out='docs/plots/soak.png'" docs/plots/soak.gp
set datafile separator ","
set terminal pngcairo size 1200,900 font "sans,10"
set output out
set multiplot layout 3,2 title "carehub soak: 198 sensors at 1 Hz, uplink to mutual-TLS mosquitto (release build)"
set key off
set grid
set xlabel "minutes"
set title "resident memory (MiB)"
set yrange [0:*]
# CSVs from 2026-12-03 (third session) on also hold the anonymous and the
# file-backed (code) parts: pass -e "split=1" to draw them.
if (exists("split")) {
  set key top left
  plot csv using ($1/60):($2/1024) every ::1 with lines lw 2 title "resident", \
       csv using ($1/60):($9/1024) every ::1 with lines lw 1 title "anonymous", \
       csv using ($1/60):($10/1024) every ::1 with lines lw 1 title "file-backed (code)"
  set key off
} else {
  plot csv using ($1/60):($2/1024) every ::1 with lines lw 2
}
set title "open files"
plot csv using ($1/60):3 every ::1 with lines lw 2
set title "CPU (% of one core, per 10 s)"
prev = 0
delta(x) = (d = x - prev, prev = x, d)
plot csv using ($1/60):(delta($4)/10*100) every ::2 with lines lw 2
set title "database file (MB)"
plot csv using ($1/60):($6/1e6) every ::1 with lines lw 2
set title "WAL (MB)"
plot csv using ($1/60):($7/1e6) every ::1 with lines lw 2
set title "written to storage (MB, cumulative)"
plot csv using ($1/60):($5/1e6) every ::1 with lines lw 2
unset multiplot
