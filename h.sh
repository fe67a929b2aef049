#!/bin/sh
cat >/dev/null
sleep 20
