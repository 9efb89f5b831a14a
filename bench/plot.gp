# gnuplot -e "tsv='sweep.tsv'; png='throughput.png'" plot.gp
# Throughput (echoes/s) and p99 latency vs concurrent connections, one line per setup.
set terminal pngcairo size 1200,500 font "sans,10"
set output png
set datafile separator "\t"
set key autotitle columnhead
set multiplot layout 1,2 title "stanzawall benchmark: throughput and p99 vs connections (direct TLS, 2 shared cores)"
set logscale x
set grid
set xlabel "concurrent sessions"
set ylabel "echoes/s (each = 2 stanzas through the proxy)"
set key top left
stats tsv skip 1 nooutput
n = (STATS_columns - 1) / 2
plot for [i=1:n] tsv using 1:(column(2*i)) with linespoints lw 2 title columnhead(2*i)
set ylabel "p99 round trip (ms)"
set logscale y
plot for [i=1:n] tsv using 1:(column(2*i+1)) with linespoints lw 2 title columnhead(2*i+1)
unset multiplot
