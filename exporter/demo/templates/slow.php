<?php
// Sleeps ?s=N seconds (fractions allowed), then answers.
header('Content-Type: text/plain');
$seconds = isset($_GET['s']) ? max(0.0, (float) $_GET['s']) : 1.0;
usleep((int) ($seconds * 1000000));
echo "slept {$seconds}s\n";
