from openrlhf_meds.demo.main import main

main()
