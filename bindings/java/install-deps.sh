#!/usr/bin/env bash
# Installs what the Java tests need on a Debian machine: a JDK and JUnit 4 (javac + Debian's jar;
# no Maven Central needed).
set -euo pipefail
if [ -f /usr/share/java/junit4.jar ] && command -v javac >/dev/null; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq default-jdk-headless junit4 >/dev/null
