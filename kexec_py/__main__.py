from kexec_py.main import main

main()
