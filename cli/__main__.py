from trajdistill import main

main()
