//! JNI glue for bindings/java and android/ (feature `jni`).
